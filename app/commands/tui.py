"""`specs-local tui` (and `specs-local` alone): the interactive terminal app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from app.commands.common import (
    Consent,
    RuntimeOptions,
    build_settings,
    method_option,
    open_preset,
    preset_option,
    runtime_options,
    search_options,
)
from app.config import Catalog, ModelEntry, Preset, load_catalog
from app.presets import resolve_preset
from app.search.settings import SearchSettings
from app.search.types import Engines
from app.tui.engines import EnginesFactory


def local_engines(runtime: RuntimeOptions) -> EnginesFactory:
    """The factory the app opens a preset's GGUF models with."""

    @contextmanager
    def open_local(preset: Preset, catalog: Catalog, settings: SearchSettings) -> Iterator[Engines]:
        # The app checks for missing models before it gets here, so this never
        # downloads or prompts (the terminal belongs to the app).
        with open_preset(resolve_preset(catalog, preset), settings, runtime=runtime, consent=Consent()) as engines:
            yield engines

    return open_local


def missing_models(preset: Preset, catalog: Catalog) -> list[ModelEntry]:
    return resolve_preset(catalog, preset).missing


@click.command("tui")
@preset_option("Preset of models.toml to start with.")
@method_option("Search method to start with (default: the preset's).")
@search_options
@runtime_options
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
        engines_factory=local_engines(RuntimeOptions(threads, gpu_layers)),
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
