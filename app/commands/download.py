"""`specs-local download`: the models of presets, catalog models, or any GGUF of the Hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from app import hub, transfer
from app.commands.common import check_output_dir, check_output_file, echo_err
from app.config import Catalog, ModelEntry, load_catalog, user_config_path, write_user_overrides
from app.errors import UserError
from app.presets import ResolvedPreset, check_vocabulary, resolve_preset
from engines.gguf_info import read_header

# The context a newly registered model gets, unless it was trained on less.
REGISTERED_CONTEXT = 4096


@dataclass
class Request:
    """What the arguments ask for: catalog entries (each once) and the presets they came from."""

    entries: list[ModelEntry] = field(default_factory=list)
    presets: list[ResolvedPreset] = field(default_factory=list)
    new_model: bool = False  # a REPO_ID --file download that is not in the catalog yet

    def add(self, entry: ModelEntry) -> None:
        if all(e.name != entry.name for e in self.entries):
            self.entries.append(entry)


@click.command(
    epilog="""\b
Examples:
  specs-local download cpu-dev --dry-run
  specs-local download paper
  specs-local download qwen2.5-math-7b-instruct --revision 0123abc
  specs-local download bartowski/Qwen2.5-Math-7B-Instruct-GGUF --file '*Q5_K_M.gguf'
  HF_HUB_OFFLINE=1 specs-local download laptop     # only checks the cache
""",
)
@click.argument("targets", nargs=-1, metavar="[PRESET|MODEL|REPO_ID]...")
@click.option(
    "--file",
    "file_pattern",
    metavar="FILENAME",
    help="With a REPO_ID: its GGUF file; a glob such as '*Q4_K_M.gguf' picks one.",
)
@click.option(
    "--revision", metavar="REV", help="Branch, tag or commit (one model or repo); recorded in your models.toml."
)
@click.option(
    "--local-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download here instead of the Hugging Face cache; recorded as the model's path.",
)
@click.option(
    "--name", metavar="NAME", help="With a REPO_ID: the model name to register it under (default: from the file name)."
)
@click.option("--dry-run", is_flag=True, help="List sizes and what is already here; download nothing.")
def command(
    targets: tuple[str, ...],
    file_pattern: str | None,
    revision: str | None,
    local_dir: Path | None,
    name: str | None,
    dry_run: bool,
) -> None:
    """Download the models of presets, catalog models, or a GGUF file of any Hub repo.

    Files go into the Hugging Face cache (HF_HOME) unless --local-dir is given.
    An interrupted download resumes where it stopped when run again. Pinned
    sha256 sums are checked, and a preset's draft and target are checked for a
    shared vocabulary.
    """
    if local_dir is not None:
        local_dir = check_output_dir(local_dir, "--local-dir").resolve()
    catalog = load_catalog()
    request = _request(catalog, targets, file_pattern, revision, name)
    destination = transfer.Destination(local_dir)
    if dry_run:
        _show_plan(request, destination)
        return
    if request.new_model or revision is not None or local_dir is not None:
        # Where the download is recorded, checked before gigabytes are fetched.
        check_output_file(user_config_path(), "The user catalog", make_folder=True)

    paths, to_download, never_downloaded = _sort_out(request.entries, destination)
    for item in transfer.download_models(to_download, destination=destination, echo=echo_err):
        paths[item.entry.name] = item.path
        _record(catalog, item, destination, request.new_model)
    for entry in request.entries:
        if entry.name in paths:
            click.echo(f"{entry.name}: {paths[entry.name]}")
    for preset in request.presets:
        _check_vocabulary(preset.with_files(paths))
    if never_downloaded:
        raise UserError(hub.where_to_put(never_downloaded))


def _sort_out(
    entries: list[ModelEntry], destination: transfer.Destination
) -> tuple[dict[str, Path], list[ModelEntry], list[ModelEntry]]:
    """Models already here (verified), models to download, and models that are never downloaded."""
    paths: dict[str, Path] = {}
    to_download: list[ModelEntry] = []
    never_downloaded: list[ModelEntry] = []
    for entry in entries:
        path = _present(entry, destination)
        if path is not None:
            try:
                hub.verify_local(entry, path, echo=echo_err)
            except hub.ModelFileRejected as exc:
                if not entry.repo:
                    raise
                click.echo(f"{exc} Downloading it again.", err=True)
            else:
                paths[entry.name] = path
                continue
        (to_download if entry.repo else never_downloaded).append(entry)
    return paths, to_download, never_downloaded


def _check_vocabulary(preset: ResolvedPreset) -> None:
    """Said now rather than when solve loads the models (VocabularyMismatch exits 2)."""
    if not preset.ready:
        return  # a model is missing; that is reported on its own
    note = check_vocabulary(preset)
    if note:
        click.echo(note, err=True)
    else:
        click.echo(f"{preset.name}: ready")


def _request(
    catalog: Catalog, targets: tuple[str, ...], file_pattern: str | None, revision: str | None, name: str | None
) -> Request:
    if not targets:
        raise click.UsageError(
            f"Name a preset ({', '.join(catalog.presets)}), a model, or a REPO_ID with --file FILENAME."
        )
    request = Request()
    if file_pattern is not None:
        if len(targets) != 1 or "/" not in targets[0]:
            raise click.UsageError(
                "--file goes with exactly one REPO_ID, e.g. bartowski/Qwen2.5-Math-7B-Instruct-GGUF."
            )
        repo = targets[0]
        file = transfer.match_repo_file(repo, file_pattern, revision or "main")
        entry, request.new_model = _repo_entry(catalog, repo, file, revision, name)
        request.add(entry)
        return request
    if name is not None:
        raise click.UsageError("--name goes with a REPO_ID and --file.")
    for target in targets:
        if target in catalog.presets:
            preset = resolve_preset(catalog, target)
            request.presets.append(preset)
            for role in preset.models:
                request.add(role.entry)
        elif target in catalog.models:
            request.add(catalog.models[target])
        elif "/" in target:
            raise click.UsageError(f"Name the GGUF file of {target} with --file, e.g. --file '*Q4_K_M.gguf'.")
        else:
            raise UserError(
                f"{target!r} is neither a preset ({', '.join(catalog.presets)}) nor a model of the catalog"
                " (`specs-local models` lists them)."
            )
    if revision is not None:
        if len(request.entries) != 1 or not request.entries[0].repo:
            raise click.UsageError("--revision applies to one model from the Hub (or one REPO_ID with --file).")
        request.entries[0] = request.entries[0].model_copy(update={"revision": revision})
    return request


def _repo_entry(
    catalog: Catalog, repo: str, file: str, revision: str | None, name: str | None
) -> tuple[ModelEntry, bool]:
    """The catalog's entry for this file, or a new one to register once downloaded."""
    for entry in catalog.models.values():
        if entry.repo == repo and entry.file == file and (name is None or name == entry.name):
            return (entry.model_copy(update={"revision": revision}) if revision else entry), False
    name = name or Path(file).stem.lower()
    if name in catalog.models:
        taken = catalog.models[name]
        raise UserError(
            f"The catalog already has a model named {name} ({taken.repo or taken.path or taken.file});"
            " choose another name with --name."
        )
    return ModelEntry(name=name, repo=repo, file=file, revision=revision or "main"), True


def _present(entry: ModelEntry, destination: transfer.Destination) -> Path | None:
    if destination.local_dir is not None and entry.repo:
        path = destination.local_dir / entry.file
        return path if path.is_file() else None
    return hub.find_model(entry)


def _record(catalog: Catalog, item: transfer.Fetched, destination: transfer.Destination, new_model: bool) -> None:
    """Write to the user catalog what solve needs to find this download again."""
    entry, remote = item.entry, item.remote
    fields: dict[str, object] = {}
    if new_model:
        trained = read_header(item.path).context_length
        fields = {
            "repo": remote.repo,
            "file": remote.file,
            "revision": remote.commit,  # the exact file that was downloaded and hashed
            "size": item.path.stat().st_size,
            "context": max(256, min(REGISTERED_CONTEXT, trained or REGISTERED_CONTEXT)),
            "description": f"{remote.file} from {remote.repo}",
        }
        if remote.content_sha256:
            fields["sha256"] = remote.content_sha256
    elif entry.revision != catalog.models[entry.name].revision:
        fields["revision"] = entry.revision
    if destination.local_dir is not None:
        fields["path"] = str(item.path)
    if fields:
        written = write_user_overrides({"models": {entry.name: fields}})
        what = "registered" if new_model else "recorded " + ", ".join(fields)
        click.echo(f"{entry.name}: {what} in {written}", err=True)


def _show_plan(request: Request, destination: transfer.Destination) -> None:
    total = 0
    for entry in request.entries:
        path = _present(entry, destination)
        if path is not None:
            click.echo(f"{entry.name}: present, {hub.format_size(path.stat().st_size)} at {path}")
        elif not entry.repo:
            click.echo(f"{entry.name}: missing; {hub.where_to_put([entry])}")
        elif hub.offline():
            size = hub.format_size(entry.size)
            click.echo(f"{entry.name}: not downloaded, about {size} (offline: the size models.toml gives)")
            total += entry.size or 0
        else:
            remote = transfer.remote_file(entry.repo, entry.file, entry.revision)
            partial = destination.partial_bytes(remote)
            resumed = f", {hub.format_size(partial)} already here" if partial else ""
            click.echo(
                f"{entry.name}: to download, {hub.format_size(remote.size)}{resumed}"
                f" ({remote.repo}/{remote.file} at {remote.commit[:12]})"
            )
            total += destination.needed_bytes(remote)
    directory = destination.directory()
    free = transfer.free_bytes(directory)
    click.echo(f"to download: {hub.format_size(total)}; {hub.format_size(free)} free in {directory}")
