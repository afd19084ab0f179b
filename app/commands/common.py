"""What the commands that run a preset share: their options, their output paths, and opening a preset.

`--preset`, `--method`, `--threads`, `--gpu-layers`, `--yes` and the search
options are declared here once, each with its SPECS_LOCAL_* twin. A command
resolves its preset once (`app.presets.resolve_preset`) and runs it with
`open_preset`: its files made present (downloaded only with consent), its
engines opened, and closed again on exit. Every file or folder a command
will write is checked first (`check_output_file`, `check_output_dir`), so a
typo in a path costs one sentence, not a model load and a traceback.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from pydantic import ValidationError

from app.config import ModelEntry, RewardKind, RewardSpec
from app.errors import UserError
from app.hub import Echo, format_size, offline, where_to_put
from app.presets import ResolvedPreset, check_vocabulary
from app.runtime import open_engines
from app.search.settings import METHODS, SearchSettings
from app.search.types import Engines
from app.transfer import download_models

F = TypeVar("F", bound=Callable[..., Any])


def echo_err(line: str) -> None:
    """Progress and notes go to stderr, so that stdout stays the command's result."""
    click.echo(line, err=True)


# -- options ------------------------------------------------------------------------


def preset_option(help_text: str = "Preset of models.toml (default: the catalog's).") -> Callable[[F], F]:
    return click.option("--preset", default=None, envvar="SPECS_LOCAL_PRESET", show_envvar=True, help=help_text)


def method_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--method",
        type=click.Choice(METHODS),
        default=None,
        envvar="SPECS_LOCAL_METHOD",
        show_envvar=True,
        help=help_text,
    )


REWARD_KINDS = ("judge", "value-head", "token-prm", "step-tag-prm")


def reward_option(func: F) -> F:
    return click.option(
        "--reward",
        type=click.Choice(REWARD_KINDS),
        default=None,
        envvar="SPECS_LOCAL_REWARD",
        show_envvar=True,
        help="Reward kind instead of the preset's, on its reward model, e.g. --reward judge"
        " (cpu-dev's yes/no judge instead of its value head).",
    )(func)


def with_reward(preset: ResolvedPreset, kind: str | None) -> ResolvedPreset:
    """The preset with its reward kind replaced (--reward); the reward model stays."""
    spec = preset.preset.reward
    if kind is None or kind == spec.kind:
        return preset
    if kind == "value-head":
        raise UserError(
            f"--reward value-head needs a head file: set `head` in preset {preset.name}'s reward in your models"
            " file (`specs-local models --paths`), or train one with `specs-local train-head`."
        )
    reward = RewardSpec(kind=cast(RewardKind, kind), model=spec.model)
    return replace(preset, preset=preset.preset.model_copy(update={"reward": reward}))


def yes_option(help_text: str = "Download missing models of the preset without asking.") -> Callable[[F], F]:
    return click.option("--yes", "-y", is_flag=True, help=help_text)


def runtime_options(func: F) -> F:
    """--threads and --gpu-layers: how llama.cpp runs the preset's models."""
    func = click.option(
        "--gpu-layers",
        type=int,
        default=None,
        envvar="SPECS_LOCAL_GPU_LAYERS",
        show_envvar=True,
        help="Layers to offload to the GPU (default: all when the build supports it; 0 = CPU), e.g. --gpu-layers 20.",
    )(func)
    return click.option(
        "--threads",
        type=click.IntRange(1, 512),
        default=None,
        envvar="SPECS_LOCAL_THREADS",
        show_envvar=True,
        help="CPU threads for llama.cpp, e.g. --threads 8.",
    )(func)


SEARCH_OPTIONS: list[tuple[str, str, Any, str]] = [
    # (flag, settings field, click type, help)
    ("--n", "n", click.INT, "Candidates per step (drafts in SPECS, expansions in beam search), e.g. --n 8."),
    (
        "--beam-width",
        "beam_width",
        click.INT,
        "Prefixes kept after each step (m; 1 is the paper), e.g. --beam-width 2.",
    ),
    (
        "--temperature",
        "temperature",
        click.FLOAT,
        "Sampling temperature (also SPECS's acceptance temperature), e.g. --temperature 0.7.",
    ),
    ("--top-p", "top_p", click.FLOAT, "Nucleus sampling mass, e.g. --top-p 0.95."),
    ("--beta", "beta", click.FLOAT, "Reward weight in SPECS's tilted score, e.g. --beta 20."),
    (
        "--tau-accept",
        "tau_accept",
        click.FLOAT,
        "SPECS accepts drafts whose tilted score is above this, e.g. --tau-accept 9.",
    ),
    (
        "--tau-switch",
        "tau_switch",
        click.FLOAT,
        "SPECS returns to the draft after a target step with a reward above this, e.g. --tau-switch 0.5.",
    ),
    (
        "--rsd-delta",
        "rsd_delta",
        click.FLOAT,
        "RSD keeps a draft step with a reward of at least this, e.g. --rsd-delta 0.5.",
    ),
    (
        "--result-check",
        "result_check",
        click.FLOAT,
        "Scale a step's reward down when the target doubts a result after '=' (probability below this; 0 is off),"
        " e.g. --result-check 0.1.",
    ),
    (
        "--equation-check",
        "equation_check",
        click.BOOL,
        "Give reward 0 to a step that writes a false equation between numbers ('5 + 7 = 13'),"
        " e.g. --equation-check false.",
    ),
    ("--max-steps", "max_steps", click.INT, "Most reasoning steps per solution, e.g. --max-steps 12."),
    ("--max-step-tokens", "max_step_tokens", click.INT, "Most tokens per step, e.g. --max-step-tokens 160."),
    ("--logprob-norm", "logprob_norm", click.Choice(["mean", "sum"]), "Length normalisation of the log-ratio."),
    (
        "--answer-selection",
        "answer_selection",
        click.Choice(["best", "vote"]),
        "Best completed candidate, or a reward-weighted vote.",
    ),
    ("--seed", "seed", click.INT, "Random seed: the same seed gives the same search, e.g. --seed 1."),
]


def search_options(func: F) -> F:
    """The search parameters as options with SPECS_LOCAL_* twins; a command gets
    them as keyword arguments named after the settings' fields (None: not given)."""
    for flag, field, kind, help_text in reversed(SEARCH_OPTIONS):
        env = "SPECS_LOCAL_" + field.upper()
        func = click.option(flag, field, type=kind, default=None, envvar=env, show_envvar=True, help=help_text)(func)
    return func


def build_settings(preset_search: dict[str, Any], given: dict[str, Any]) -> SearchSettings:
    """The preset's search table with the options given on top; a bad value is one sentence naming its flag."""
    values = {**preset_search, **{k: v for k, v in given.items() if v is not None}}
    try:
        return SearchSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = first["loc"][0] if first["loc"] else ""
        flag = "--" + str(field).replace("_", "-") if field else "the search settings"
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"Invalid {flag}: {message}.") from None


# -- output paths -------------------------------------------------------------------


def check_output_file(path: Path, what: str, *, make_folder: bool = False) -> Path:
    """Refuse, before any model loads, an output file that could not be written.

    `what` starts the sentence ("--trace", "The user catalog"). The path must
    not be a folder; its folder must exist and take a new file, or with
    `make_folder` be one that can be made. Nothing is left behind: a probe file
    is made and removed at once.
    """
    path = path.expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name inside it, e.g. {path / 'out.jsonl'}.")
    if make_folder:
        check_output_dir(path.parent, what, shown=path)
    else:
        folder = path.parent
        if not folder.exists():
            raise UserError(f"{what} {path}: the folder {folder} does not exist; create it or choose another path.")
        if not folder.is_dir():
            raise UserError(f"{what} {path}: {folder} is a file, not a folder; choose another path.")
        _probe(folder, what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is read-only; change its permissions or choose another path.")
    return path


def check_output_dir(path: Path, what: str, *, shown: Path | None = None) -> Path:
    """Refuse, before any model loads, an output folder that could not be made or written.

    A folder that does not exist yet passes when the nearest existing folder
    above it takes new entries (whoever writes there creates it). `shown` is
    the path the sentence names, when the folder is a file's.
    """
    path = path.expanduser()
    shown = shown or path
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a link to nowhere: making the folder would fail later
            raise UserError(f"{what} {shown}: {existing} is a broken link; remove it or choose another path.")
        existing = existing.parent
    if not existing.is_dir():
        where = f"{shown} is a file" if existing == shown else f"{shown}: {existing} is a file"
        raise UserError(f"{what} {where}, not a folder; choose another path.")
    _probe(existing, what, shown)
    return path


def _probe(folder: Path, what: str, path: Path) -> None:
    """Create and remove a file in `folder`: the one test that permissions, a read-only
    mount and a full inode table all answer (os.access says yes to root everywhere)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"{what} {path} cannot be written ({reason} in {folder}); choose another path or fix its permissions."
        ) from None


# -- opening a preset ---------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeOptions:
    """How llama.cpp runs the models (--threads, --gpu-layers; None: its defaults)."""

    threads: int | None = None
    gpu_layers: int | None = None


@dataclass(frozen=True)
class Consent:
    """Whether missing model files may be downloaded: --yes, or a yes at a prompt
    that is shown only when `interactive` (the default: neither)."""

    assume_yes: bool = False
    interactive: bool = False


def ensure_files(preset: ResolvedPreset, consent: Consent, *, echo: Echo = echo_err) -> ResolvedPreset:
    """The preset with every file here, missing ones downloaded only with consent.

    Without consent raises a UserError that names the missing models and the
    command that downloads them.
    """
    missing = preset.missing
    if not missing:
        return preset
    _ask_consent(preset, missing, consent)
    fetched = download_models(missing, echo=echo)
    ready = preset.with_files({item.entry.name: item.path for item in fetched})
    note = check_vocabulary(ready)
    if note:
        echo(note)
    return ready


@contextmanager
def open_preset(
    preset: ResolvedPreset, settings: SearchSettings, *, runtime: RuntimeOptions, consent: Consent
) -> Iterator[Engines]:
    """The preset's engines, its missing files downloaded first (with consent)."""
    ready = ensure_files(preset, consent)
    with open_engines(ready, settings, threads=runtime.threads, n_gpu_layers=runtime.gpu_layers) as engines:
        yield engines


def _ask_consent(preset: ResolvedPreset, missing: Sequence[ModelEntry], consent: Consent) -> None:
    never_downloaded = [entry for entry in missing if not entry.repo]
    if never_downloaded:
        raise UserError(where_to_put(never_downloaded))
    command = f"specs-local download {preset.name}"
    names = ", ".join(m.name for m in missing)
    if offline():
        raise UserError(
            f"Preset {preset.name} needs {names}, which are not downloaded, and HF_HUB_OFFLINE is set;"
            f" run `{command}` while online."
        )
    total = sum(m.size or 0 for m in missing)
    size = f" (about {format_size(total)})" if total else ""
    if consent.assume_yes:
        return
    if not consent.interactive:
        raise UserError(
            f"Preset {preset.name} needs {names}{size}, which are not downloaded; run `{command}`,"
            " or pass --yes to download them now."
        )
    if not click.confirm(f"Preset {preset.name} needs {names}{size}. Download now?", default=True, err=True):
        raise UserError(f"Nothing was downloaded; run `{command}` when you are ready.")
