"""`specs-local calibrate`: sweep SPECS's beta and thresholds, save the chosen ones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import platformdirs

from app.commands import bench
from app.commands.common import (
    Consent,
    RuntimeOptions,
    build_settings,
    check_output_dir,
    check_output_file,
    preset_option,
    runtime_options,
    search_options,
    yes_option,
)
from app.config import load_catalog, user_config_path, write_user_overrides
from app.errors import UserError
from app.eval.calibrate import (
    SWEPT,
    choose,
    grid_arms,
    parse_objective,
    parse_values,
    points_from_summary,
    table,
)
from app.presets import resolve_preset

GRID_FLAGS = {"beta": "--betas", "tau_accept": "--tau-accepts", "tau_switch": "--tau-switches"}


def default_out(preset: str, dataset: str) -> Path:
    name = Path(dataset).stem if dataset.endswith(".jsonl") else dataset.replace("/", "_").replace(":", "_")
    return platformdirs.user_cache_path("specs-local") / "calibrate" / f"{preset}-{name}"


@click.command("calibrate")
@click.option(
    "--dataset",
    default="gsm8k",
    show_default=True,
    envvar="SPECS_LOCAL_DATASET",
    help="JSON Lines file, short name or Hub id to calibrate on.",
)
@preset_option("Preset to calibrate (default: the catalog's).")
@bench.dataset_options
@click.option("--betas", default="5,10,20", show_default=True, help="Values of beta to try.")
@click.option("--tau-accepts", default="5,7,9", show_default=True, help="Values of tau_accept to try.")
@click.option("--tau-switches", default="0.7", show_default=True, help="Values of tau_switch to try.")
@click.option(
    "--objective",
    default="fastest-within:1.0",
    show_default=True,
    help="most-accurate, or fastest-within:POINTS of beam search's accuracy.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the sweep's results go (default: the user cache; a rerun resumes).",
)
@search_options
@click.option("--dry-run", is_flag=True, help="Print the table and the choice; write nothing.")
@yes_option("Save the choice (and download missing models) without asking.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@runtime_options
def command(
    dataset: str,
    preset: str | None,
    limit: int | None,
    offset: int,
    ids: str | None,
    shuffle: bool,
    betas: str,
    tau_accepts: str,
    tau_switches: str,
    objective: str,
    out: Path | None,
    dry_run: bool,
    yes: bool,
    no_progress: bool,
    threads: int | None,
    gpu_layers: int | None,
    **search: Any,
) -> None:
    """Run beam search and SPECS at every (beta, tau_accept, tau_switch) of the
    grid on a slice of DATASET (the first 20 problems unless --limit or --ids),
    print the accuracy-latency table with its Pareto front, and save the
    setting the objective picks to the preset's user override.

    \b
    Examples:
      specs-local calibrate --preset cpu-dev --limit 20
      specs-local calibrate --betas 5,10 --tau-accepts 6,7,8 --objective most-accurate --dry-run
    """
    for field, grid_flag in GRID_FLAGS.items():
        if search.get(field) is not None:
            flag = "--" + field.replace("_", "-")
            raise UserError(f"{flag} is what calibrate sweeps; give its values with {grid_flag} instead.")
    wanted = parse_objective(objective)
    arms = grid_arms(
        parse_values("--betas", betas),
        parse_values("--tau-accepts", tau_accepts),
        parse_values("--tau-switches", tau_switches),
    )
    chosen_preset = resolve_preset(load_catalog(), preset)
    settings = build_settings(chosen_preset.preset.search, search)
    for arm in arms[1:]:
        build_settings(settings.model_dump(), arm.overrides)  # a bad grid value fails before any model loads
    limit = 20 if limit is None and not ids else limit
    problems = bench.load_problems(dataset, limit=limit, offset=offset, ids=ids, shuffle=shuffle, seed=settings.seed)
    out = check_output_dir(out or default_out(chosen_preset.name, dataset), "--out")
    if not dry_run:  # where the choice is saved, after a sweep that may take hours
        check_output_file(user_config_path(), "The user catalog", make_folder=True)
    selection = {"limit": limit, "offset": offset, "ids": ids, "shuffle": shuffle}
    runtime = RuntimeOptions(threads, gpu_layers)
    config = bench.bench_config(problems, chosen_preset, settings, selection, runtime)
    # Every SPECS arm sets the swept values itself, so the preset's own (say, from
    # an earlier calibration) do not change what the sweep's results mean.
    config["settings"] = {k: v for k, v in config["settings"].items() if k not in SWEPT}
    click.echo(
        f"Sweeping {len(arms) - 1} SPECS settings and beam search on {len(problems.problems)} problems "
        f"of {problems.name}; results in {out}.",
        err=True,
    )
    bench.run_arms(
        arms,
        dataset=problems,
        preset=chosen_preset,
        settings=settings,
        out=out,
        config=config,
        trace_dir=None,
        retry_errors=False,
        progress=not no_progress,
        runtime=runtime,
        consent=Consent(assume_yes=yes, interactive=sys.stdin.isatty()),
    )

    summary = bench.report(out, reference="beam")
    baseline, points = points_from_summary(summary, arms)
    choice = choose(points, wanted, baseline)
    click.echo(table(points, baseline, choice))
    click.echo(
        f"Chosen ({wanted.describe()}): {choice.label}, {choice.accuracy:.1%} at {choice.latency:.2f} s per problem."
    )

    update = {"presets": {chosen_preset.name: {"search": choice.settings}}}
    target = user_config_path()
    if dry_run:
        click.echo(f"Dry run: would write {choice.settings} to [presets.{chosen_preset.name}.search] in {target}.")
        return
    if not yes and not click.confirm(f"Save these settings for preset {chosen_preset.name} in {target}?", default=True):
        click.echo("Nothing written.")
        return
    try:
        written = write_user_overrides(update)
    except OSError as exc:
        raise UserError(
            f"Cannot write {target} ({exc.strerror}); check its permissions or set SPECS_LOCAL_CONFIG."
        ) from None
    click.echo(f"Saved to {written}; `specs-local solve --preset {chosen_preset.name}` now uses them.")
