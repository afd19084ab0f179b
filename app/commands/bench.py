"""`specs-local bench`: methods side by side on a dataset, accuracy and latency."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click

from app.commands.common import (
    Consent,
    RuntimeOptions,
    build_settings,
    check_output_dir,
    open_preset,
    preset_option,
    reward_option,
    runtime_options,
    search_options,
    with_reward,
    yes_option,
)
from app.commands.solve import StopOnInterrupt
from app.config import load_catalog
from app.errors import UserError
from app.eval.datasets import Dataset, load_dataset
from app.eval.report import write_report
from app.eval.runner import (
    RESULTS,
    Arm,
    Outcome,
    RichProgress,
    check_draft,
    parse_methods,
    run_bench,
)
from app.presets import ResolvedPreset, resolve_preset
from app.search.settings import SearchSettings
from app.search.types import Engines

# The time source of latencies; tests swap in the scripted engines' fake clock.
clock: Callable[[], float] = time.monotonic


class Interrupted(UserError):
    """Ctrl-C during a benchmark: finished runs are kept; exit like an interrupt."""

    exit_code = 130


def dataset_options(func: Any) -> Any:
    """Which problems to run (shared with `calibrate`)."""
    options = [
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Run at most this many problems."),
        click.option(
            "--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Skip this many problems first."
        ),
        click.option("--ids", default=None, help="Only these problem ids, comma-separated."),
        click.option("--shuffle", is_flag=True, help="Shuffle the problems (with --seed) before --offset/--limit."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_problems(
    dataset: str, *, limit: int | None, offset: int, ids: str | None, shuffle: bool, seed: int
) -> Dataset:
    chosen = load_dataset(
        dataset,
        limit=limit,
        offset=offset,
        shuffle=shuffle,
        seed=seed,
        ids=[i.strip() for i in ids.split(",") if i.strip()] if ids else None,
    )
    if chosen.skipped:
        shown = "; ".join(chosen.skipped[:10]) + ("; ..." if len(chosen.skipped) > 10 else "")
        click.secho(f"warning: skipped {len(chosen.skipped)} rows of {chosen.source}: {shown}", fg="yellow", err=True)
    if not chosen.problems:
        raise UserError(f"--offset/--limit/--ids select no problem of {chosen.source}; widen the selection.")
    return chosen


def bench_config(
    dataset: Dataset,
    preset: ResolvedPreset,
    settings: SearchSettings,
    selection: dict[str, Any],
    runtime: RuntimeOptions,
) -> dict[str, Any]:
    return {
        "dataset": {"name": dataset.name, "source": dataset.source},
        "preset": preset.name,
        "models": preset.preset.roles(),
        "reward": preset.preset.reward.model_dump(exclude_none=True),
        "settings": settings.model_dump(),
        "runtime": {"threads": runtime.threads, "n_gpu_layers": runtime.gpu_layers},
        "selection": selection,
    }


def run_arms(
    arms: list[Arm],
    *,
    dataset: Dataset,
    preset: ResolvedPreset,
    settings: SearchSettings,
    out: Path,
    config: dict[str, Any],
    trace_dir: Path | None,
    retry_errors: bool,
    progress: bool,
    runtime: RuntimeOptions,
    consent: Consent,
    parallel: int = 1,
) -> Outcome:
    """Run the arms and turn an interruption into exit 130 with how to resume."""
    check_draft(arms, preset.draft is not None, f"preset {preset.name}")
    if parallel > 1 and not preset.remote:
        here = ", ".join(role for role, model in preset.roles.items() if not model.entry.remote)
        raise UserError(
            f"--parallel runs problems at once on model servers, but preset {preset.name} runs its {here} "
            "from files here; use --parallel 1, or serve those models with vLLM (see the README)."
        )

    def engines() -> AbstractContextManager[Engines]:
        # Opened only when runs are left, so a finished benchmark never downloads or loads a model.
        return open_preset(preset, settings, runtime=runtime, consent=consent)

    with StopOnInterrupt() as stop:
        outcome = run_bench(
            dataset.problems,
            arms,
            settings,
            out,
            engines,
            config=config,
            trace_dir=trace_dir,
            should_stop=stop,
            clock=clock,
            progress=RichProgress() if progress else None,
            retry_errors=retry_errors,
            parallel=parallel,
        )
    if outcome.interrupted:
        raise Interrupted(
            f"Interrupted with {outcome.remaining} of {outcome.total} runs left; the finished ones are kept in "
            f"{out / RESULTS}, and the same command resumes from there."
        )
    if outcome.errors:
        click.secho(
            f"warning: {outcome.errors} runs failed (see `error` in {out / RESULTS}); --retry-errors runs them again.",
            fg="yellow",
            err=True,
        )
    return outcome


def report(out: Path, reference: str) -> dict[str, Any]:
    """Write OUT's report; a disk that refuses it leaves the results as they are."""
    try:
        return write_report(out, reference)
    except OSError as exc:
        raise UserError(
            f"Cannot write the report in {out} ({exc.strerror or type(exc).__name__}); the results stay in"
            f" {out / RESULTS}: free some space and run `specs-local bench --report-only --out {out}`."
        ) from None


def print_summary(summary: dict[str, Any], out: Path) -> None:
    reference = summary["reference"]
    for method, m in summary["methods"].items():
        ratio = m["latency_ratio"]
        mean = m["latency"]["mean"]
        parts = [
            f"{method:<12} {m['accuracy']:6.1%} ({m['correct']}/{m['n']})",
            f"mean {mean:.2f} s" if mean is not None else "no finished run",
        ]
        if ratio is not None and method != reference:
            parts.append(f"{ratio['value']:.2f}x {reference} ({ratio['ci'][0]:.2f}-{ratio['ci'][1]:.2f})")
        click.echo("  ".join(parts))
    click.echo(summary["claim"]["sentence"])
    click.echo(f"report: {out / 'report.md'}")


@click.command("bench")
@click.option(
    "--dataset",
    default=None,
    envvar="SPECS_LOCAL_DATASET",
    help="JSON Lines file, short name (gsm8k, math500, amc23, olympiadbench, aime24) or Hub id owner/name[:config[:split]].",
)
@click.option("--methods", default="specs,beam,greedy", show_default=True, help="Methods to compare, comma-separated.")
@preset_option()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output directory: results.jsonl, config.json, summary.json, report.md, a plot.",
)
@dataset_options
@search_options
@click.option(
    "--reference", default="beam", show_default=True, help="Method the latency ratios and the claim compare with."
)
@click.option(
    "--trace-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also save every run's events as ID.METHOD.jsonl here.",
)
@click.option("--report-only", is_flag=True, help="Only rebuild the report of --out from its results.")
@click.option("--retry-errors", is_flag=True, help="Run again the runs that failed last time.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--parallel",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    envvar="SPECS_LOCAL_PARALLEL",
    show_envvar=True,
    help="Problems run at once when every model of the preset is on a server (each search stays sequential), "
    "e.g. --parallel 8.",
)
@reward_option
@yes_option()
@runtime_options
def command(
    dataset: str | None,
    methods: str,
    preset: str | None,
    reward: str | None,
    out: Path,
    limit: int | None,
    offset: int,
    ids: str | None,
    shuffle: bool,
    reference: str,
    trace_dir: Path | None,
    report_only: bool,
    retry_errors: bool,
    no_progress: bool,
    parallel: int,
    yes: bool,
    threads: int | None,
    gpu_layers: int | None,
    **search: Any,
) -> None:
    """Run METHODS on the same problems with the same seeds, interleaved problem
    by problem; one JSON line per run in OUT/results.jsonl. Rerunning with the
    same --out skips finished runs; Ctrl-C keeps them.

    \b
    Examples:
      specs-local bench --dataset gsm8k --methods specs,beam,greedy --preset cpu-dev --limit 30 --out runs/gsm8k
      specs-local bench --dataset math500 --shuffle --seed 1 --limit 100 --out runs/math500
      specs-local bench --report-only --out runs/gsm8k --reference beam
      specs-local bench --dataset math500 --preset paper-vllm --parallel 16 --out runs/math500-vllm
    """
    check_output_dir(out, "--out")
    if report_only:
        print_summary(report(out, reference), out)
        return
    if dataset is None:
        raise UserError("--dataset is missing; pass a JSON Lines file or a short name such as gsm8k.")
    if trace_dir is not None:
        check_output_dir(trace_dir, "--trace-dir")
    arms = parse_methods(methods)
    chosen = with_reward(resolve_preset(load_catalog(), preset), reward)
    settings = build_settings(chosen.preset.search, search)
    problems = load_problems(dataset, limit=limit, offset=offset, ids=ids, shuffle=shuffle, seed=settings.seed)
    selection = {"limit": limit, "offset": offset, "ids": ids, "shuffle": shuffle}
    runtime = RuntimeOptions(threads, gpu_layers)
    config = bench_config(problems, chosen, settings, selection, runtime)
    run_arms(
        arms,
        dataset=problems,
        preset=chosen,
        settings=settings,
        out=out,
        config=config,
        trace_dir=trace_dir,
        retry_errors=retry_errors,
        progress=not no_progress,
        runtime=runtime,
        consent=Consent(assume_yes=yes, interactive=sys.stdin.isatty()),
        parallel=parallel,
    )
    print_summary(report(out, reference), out)
