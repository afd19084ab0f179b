"""`specs-local models`: presets and models, what each is, and whether it is here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.config import Catalog, ModelEntry, load_catalog, models_dir, user_config_path
from app.hub import FETCH_SCRIPT, file_problem, find_model, format_size, hub_cache_dir, quantisation
from app.presets import resolve_preset


@click.command(
    epilog="""\b
Examples:
  specs-local models
  specs-local models --json | jq '.presets.paper.ready'
  specs-local models --paths
""",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--paths", is_flag=True, help="Show the user catalog file, the models folder and the Hugging Face cache.")
def command(as_json: bool, paths: bool) -> None:
    """List presets and their models: role, quantisation, size, and where each file is."""
    if paths:
        places = {
            "user_config": str(user_config_path()),
            "user_config_exists": user_config_path().is_file(),
            "models_dir": str(models_dir()),
            "hf_cache": str(hub_cache_dir()),
        }
        if as_json:
            click.echo(json.dumps(places, indent=2))
        else:
            state = "" if places["user_config_exists"] else " (not created yet)"
            click.echo(f"user catalog:       {places['user_config']}{state}")
            click.echo(f"models folder:      {places['models_dir']}  (SPECS_LOCAL_MODELS_DIR)")
            click.echo(f"Hugging Face cache: {places['hf_cache']}  (HF_HOME)")
        return
    catalog = load_catalog()
    listing = describe(catalog)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
    else:
        Console(soft_wrap=False).print(_table(catalog, listing))


def describe(catalog: Catalog) -> dict[str, Any]:
    """Presets and models as plain data (what `--json` prints)."""
    resolved = [resolve_preset(catalog, name) for name in catalog.presets]
    found = {role.entry.name: role.path for preset in resolved for role in preset.models}
    for name, entry in catalog.models.items():
        if name not in found:  # in no preset
            found[name] = find_model(entry)
    models = {name: _model_info(entry, found[name], catalog) for name, entry in catalog.models.items()}
    damaged = {name for name, info in models.items() if info["problem"]}
    presets = {
        preset.name: {
            "description": preset.preset.description,
            "default": preset.name == catalog.default_preset,
            "method": preset.preset.method,
            "roles": preset.preset.roles(),
            "reward_kind": preset.preset.reward.kind,
            "ready": preset.ready and not damaged & {role.entry.name for role in preset.models},
        }
        for preset in resolved
    }
    return {"default_preset": catalog.default_preset, "presets": presets, "models": models}


def _model_info(entry: ModelEntry, path: Path | None, catalog: Catalog) -> dict[str, Any]:
    # The header and tensor table are read every time (a tenth of a second for a
    # 150k-token vocabulary): a file cut short or damaged is never listed as ready.
    problem = file_problem(path, None, name=entry.file, echo=lambda _: None) if path else None
    return {
        "repo": entry.repo,
        "file": entry.file,
        "revision": entry.revision,
        "quantisation": quantisation(entry.file),
        "size": path.stat().st_size if path else entry.size,
        "present": path is not None or entry.remote,
        "problem": problem.text if problem else None,  # why a present file cannot be used
        "urls": entry.urls,
        "served": entry.served_name if entry.remote else None,
        "path": str(path) if path else None,
        "local": entry.local,
        "context": entry.context,
        "presets": [name for name, p in catalog.presets.items() if entry.name in p.roles().values()],
    }


def _table(catalog: Catalog, listing: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, caption="* the default preset", caption_justify="left", pad_edge=False)
    table.add_column("preset", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("model and where it is", overflow="fold", ratio=1)
    table.add_column("quant", no_wrap=True)
    table.add_column("size", no_wrap=True, justify="right")
    in_presets: set[str] = set()
    for name, preset in listing["presets"].items():
        label = f"{name} *" if preset["default"] else name
        for i, (role, model) in enumerate(preset["roles"].items()):
            in_presets.add(model)
            role_label = f"reward\n({preset['reward_kind']})" if role == "reward" else role
            cells = _model_cells(catalog, listing["models"][model], model, name)
            table.add_row(label if i == 0 else "", role_label, *cells)
        table.add_section()
    for model, info in listing["models"].items():
        if model not in in_presets:
            table.add_row("", "", *_model_cells(catalog, info, model, None))
    return table


def _model_cells(catalog: Catalog, info: dict[str, Any], model: str, preset: str | None) -> list[str]:
    """The model with where its file is (or how to get it), its quantisation and size (~: from the catalog)."""
    quant = info["quantisation"] or "?"
    if info["urls"]:
        where = ", ".join(info["urls"])
        return [f"{escape(model)}\n[green]{escape(info['served'])} at {escape(where)}[/]", "server", ""]
    entry = catalog.models[model]
    if info["problem"]:
        fix = _refetch(entry, preset or model)
        where = f"{escape(_home(info['path']))} {escape(info['problem'])}"
        return [f"{escape(model)}\n[red]damaged:[/] {where}; {escape(fix)}", quant, format_size(info["size"])]
    if info["present"]:
        return [f"{escape(model)}\n[green]{escape(_home(info['path']))}[/]", quant, format_size(info["size"])]
    if entry.repo:
        fix = _refetch(entry, preset or model)
    elif entry.local:
        fix = f"put it in {_home(str(models_dir()))}"
    else:
        fix = f"not at {entry.path}"
    size = f"~{format_size(info['size'])}" if info["size"] else "?"
    return [f"{escape(model)}\n[red]missing:[/] {escape(fix)}", quant, size]


def _refetch(entry: ModelEntry, what: str) -> str:
    if entry.repo:
        return f"run `specs-local download {what}`"
    if entry.local:
        return f"fetch it again with `{FETCH_SCRIPT}`"
    return "replace the file"


def _home(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + "/") else path
