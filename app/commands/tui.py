"""`specs-local tui` (and `specs-local` alone): the interactive terminal app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from app.commands.solve import build_settings, search_options
from app.config import Catalog, Preset, load_catalog
from app.search.settings import METHODS, SearchSettings
from app.search.types import Engines


def local_engines(threads: int | None, gpu_layers: int | None):  # type: ignore[no-untyped-def]
    """The factory the app opens a preset's GGUF models with."""

    @contextmanager
    def open_preset(preset: Preset, catalog: Catalog, settings: SearchSettings) -> Iterator[Engines]:
        from app.hub import ensure_models
        from app.runtime import open_engines

        # The app checks for missing models before it gets here, so this only
        # resolves paths; it never prompts (the terminal belongs to the app).
        paths = ensure_models(preset, catalog, assume_yes=False, interactive=False, echo=lambda line: None)
        with open_engines(preset, catalog, settings, paths=paths, threads=threads, n_gpu_layers=gpu_layers) as engines:
            yield engines

    return open_preset


def missing_models(preset: Preset, catalog: Catalog) -> list[Any]:
    from app.hub import missing_models as find_missing

    return list(find_missing(preset, catalog))


@click.command("tui")
@click.option("--preset", default=None, envvar="SPECS_LOCAL_PRESET", help="Preset of models.toml to start with.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=None,
    envvar="SPECS_LOCAL_METHOD",
    help="Search method to start with (default: the preset's).",
)
@search_options
@click.option(
    "--threads",
    type=click.IntRange(1, 512),
    default=None,
    envvar="SPECS_LOCAL_THREADS",
    help="CPU threads for llama.cpp.",
)
@click.option(
    "--gpu-layers",
    type=int,
    default=None,
    envvar="SPECS_LOCAL_GPU_LAYERS",
    help="Layers to offload to the GPU (default: all when the build supports it; 0 = CPU).",
)
def command(preset: str | None, method: str | None, threads: int | None, gpu_layers: int | None, **search: Any) -> None:
    """Open the interactive app: type a question, watch the draft propose steps,
    the target and the reward model judge them, and SPECS defer or accept.

    \b
    Examples:
      specs-local
      specs-local tui --preset cpu-dev
      specs-local tui --method beam --n 8
    """
    from app.tui.app import SpecsApp
    from app.tui.history import default_history_path
    from app.tui.logfile import default_log_path, divert_logging

    catalog = load_catalog()
    chosen = catalog.preset(preset)
    build_settings(chosen.search, search)  # a bad flag is refused here, before the screen opens
    app = SpecsApp(
        catalog,
        preset=chosen.name,
        method=method,
        engines_factory=local_engines(threads, gpu_layers),
        missing_models=missing_models,
        settings=lambda p: build_settings(p.search, search),
        history_path=default_history_path(),
        log_path=default_log_path(),
    )
    try:
        with divert_logging(default_log_path()):
            app.run()
    finally:
        # Waits for a cancelled search thread to let go of the models first.
        if app.engines is not None:
            app.engines.close()
