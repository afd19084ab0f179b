"""`specs-local train-head`: make a value head for a preset's target."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from app.commands.common import (
    Consent,
    RuntimeOptions,
    check_output_file,
    echo_err,
    ensure_files,
    preset_option,
    runtime_options,
    yes_option,
)
from app.errors import UserError

DEFAULT_PLANS = "draft@T*2,draft@0.8*2,target@0.8*2/3"
_PLAN = re.compile(r"^(draft|target)@(T|\d+(?:\.\d+)?)\*(\d+)(?:/(\d+))?$")


def parse_plans(
    text: str, search_temperature: float, *, has_draft: bool, max_steps: int = 12, max_step_tokens: int = 160
) -> list[Any]:
    """`draft@T*2,target@0.8*2/3` -> rollout plans (T: the preset's search temperature),
    each writing steps as the search does (its step and token caps)."""
    from app.eval.rollouts import RolloutPlan

    plans = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = _PLAN.match(part)
        if not match:
            raise UserError(
                f"Invalid --plans entry {part!r}; write ROLE@TEMPERATURE*SAMPLES[/EVERY], e.g. --plans draft@T*2,target@0.8*2/3."
            )
        role, temp, samples, every = match.groups()
        if role == "draft" and not has_draft:
            raise UserError(f"--plans names the draft ({part}) but the preset has no draft model.")
        temperature = search_temperature if temp == "T" else float(temp)
        if not 0 <= temperature <= 5 or not 1 <= int(samples) <= 16 or (every is not None and int(every) < 1):
            raise UserError(f"Invalid --plans entry {part!r}: temperature 0-5, 1-16 samples, every 1 or more.")
        plans.append(
            RolloutPlan(
                role,
                temperature,
                int(samples),
                max_steps=max_steps,
                max_step_tokens=max_step_tokens,
                every=int(every or 1),
            )
        )
    if not plans:
        raise UserError(f"--plans is empty; e.g. --plans {DEFAULT_PLANS}.")
    return plans


def parse_rows(text: str) -> list[tuple[int, int | None]]:
    """START:END ranges joined by commas (either end may be empty): "200:230,250:"."""
    ranges = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d*):(\d*)", part.strip())
        if not match:
            raise UserError(
                f"Invalid --rows {text!r}; write START:END (either may be empty), several joined by commas,"
                " e.g. --rows 200: or --rows 200:230,250:."
            )
        start = int(match.group(1) or 0)
        end = int(match.group(2)) if match.group(2) else None
        if end is not None and end <= start:
            raise UserError(f"Invalid --rows {text!r}: the end of {part.strip()} must come after its start.")
        ranges.append((start, end))
    return ranges


def select_rows(problems: Sequence[Any], ranges: Sequence[tuple[int, int | None]]) -> list[Any]:
    """The problems in the ranges, in their order, each once."""
    chosen = {id(p): p for start, end in ranges for p in problems[start:end]}
    return list(chosen.values())


@click.command("train-head")
@preset_option("Preset whose target gets the head (default: the catalog's).")
@click.option(
    "--dataset", required=True, help="Training problems with answers: a JSON Lines file or a short name, e.g. gsm8k."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The head file to write, e.g. heads/my-target.safetensors. Rollouts are kept in OUT.work/.",
)
@click.option(
    "--rows",
    default=":",
    show_default=True,
    help="Dataset rows to train on, START:END joined by commas, e.g. --rows 200: (rows 0-199 kept for"
    " measuring) or --rows 200:230,250: (rows 230-249 kept for calibrating).",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Most problems to use, e.g. --limit 300.")
@click.option(
    "--plans",
    default=DEFAULT_PLANS,
    show_default=True,
    help="Rollouts per problem: ROLE@TEMPERATURE*SAMPLES[/EVERY] (T: the preset's search temperature;"
    " /3: only every third problem, for a slow model).",
)
@click.option(
    "--judge/--no-judge", default=True, show_default=True, help="Measure the yes/no judge on the same held-out steps."
)
@click.option(
    "--judge-steps",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Held-out steps the judge scores (a model call each), e.g. --judge-steps 100.",
)
@click.option(
    "--mc",
    type=click.IntRange(0, 32),
    default=0,
    show_default=True,
    help="Monte-Carlo labels: solutions written on from each step (by the model that wrote it) to label it"
    " with their share of right answers; 0 labels each step with its own solution's outcome. Costs"
    " about that many solutions per step, e.g. --mc 4.",
)
@click.option(
    "--mc-steps",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Most steps that get Monte-Carlo labels (the others keep their outcome), e.g. --mc-steps 1000.",
)
@click.option(
    "--layer",
    type=click.IntRange(0),
    default=None,
    help="Read the target's hidden state at the output of this layer (0-based), e.g. --layer 16, instead of"
    " the final one. Middle layers often rank steps better; the head file remembers its layer.",
)
@runtime_options
@yes_option()
def command(
    preset: str | None,
    dataset: str,
    out: Path,
    rows: str,
    limit: int | None,
    plans: str,
    judge: bool,
    judge_steps: int,
    mc: int,
    mc_steps: int,
    layer: int | None,
    threads: int | None,
    gpu_layers: int | None,
    yes: bool,
) -> int:
    """Train a value head for a preset's target on a dataset's problems.

    The draft and the target write solutions step by step (as the search
    does); each step is labelled by whether its solution reached the right
    answer; the target's hidden state at each step end is the feature of an
    L2-regularised logistic regression. The output shows the head's AUC on
    held-out problems beside the judge's, the mean target log-probability's
    and the arithmetic check's. With --mc K a step's label is instead the share
    of right answers among K solutions written on from it. Ctrl-C keeps every
    finished rollout; the same command resumes.

    \b
    Examples:
      specs-local train-head --preset cpu-dev --dataset gsm8k --rows 200: --out heads/cpu-dev.safetensors
      specs-local train-head --preset laptop --dataset gsm8k --rows 200: --limit 500 --out ~/heads/qwen-math-7b.safetensors
      specs-local train-head --preset cpu-dev --dataset gsm8k --rows 200: --mc 4 --out heads/cpu-dev-mc.safetensors
      specs-local train-head --preset cpu-dev --dataset gsm8k --rows 200: --layer 16 --out heads/cpu-dev-l16.safetensors
    """
    from app.config import load_catalog
    from app.eval.datasets import load_dataset
    from app.presets import resolve_preset

    check_output_file(out, "--out", make_folder=True)
    ranges = parse_rows(rows)
    chosen = resolve_preset(load_catalog(), preset)
    settings = chosen.preset.settings()
    rollout_plans = parse_plans(
        plans,
        settings.temperature,
        has_draft=chosen.draft is not None,
        max_steps=settings.max_steps,
        max_step_tokens=settings.max_step_tokens,
    )
    _check_local(chosen, rollout_plans)
    data = load_dataset(dataset)
    problems = select_rows(data.problems, ranges)
    problems = problems[:limit] if limit else problems
    if not problems:
        skipped = f" (the file has {len(data.skipped)} rows without a problem or an answer)" if data.skipped else ""
        raise UserError(
            f"{dataset} has no problems with answers in rows {rows}{skipped}; a head needs graded solutions."
        )
    ready = ensure_files(chosen, Consent(assume_yes=yes, interactive=True))
    runtime = RuntimeOptions(threads=threads, gpu_layers=gpu_layers)
    return _train(
        ready,
        problems,
        rollout_plans,
        out,
        runtime,
        judge=judge,
        judge_steps=judge_steps,
        mc=mc,
        mc_steps=mc_steps,
        layer=layer,
        dataset=dataset,
        rows=rows,
    )


def _check_local(chosen: Any, plans: list[Any]) -> None:
    """A head is trained on the target's hidden states and a file's sha256, and
    rollouts are written here: models on servers can do neither."""
    target = chosen.target.entry
    if target.remote:
        raise UserError(
            f"train-head reads the hidden states of the target {target.name}, which its server does not return;"
            " train the head with a preset whose target is the model's GGUF file on this machine."
        )
    draft = chosen.draft.entry if chosen.draft is not None else None
    if draft is not None and draft.remote and any(plan.source == "draft" for plan in plans):
        raise UserError(
            f"The draft {draft.name} runs on a server and train-head writes rollouts on this machine;"
            " leave it out of --plans (e.g. --plans target@0.8*2) or use a preset with a local draft."
        )


def _train(
    ready: Any, problems: list[Any], plans: list[Any], out: Path, runtime: RuntimeOptions, **options: Any
) -> int:
    from app.eval.train_head import HeadTraining, false_equation_steps, fit_and_report, monte_carlo_labels
    from app.hub import sha256_of
    from app.runtime import open_training_models

    work = out.with_name(out.name + ".work")
    progress = _RichProgress()
    training = HeadTraining(
        work,
        problems,
        plans,
        progress=progress.hooks(),
        judge_steps=options["judge_steps"],
        mc=options["mc"],
        mc_steps=options["mc_steps"],
        layer=options["layer"],
    )
    t0 = time.monotonic()
    try:
        with (
            progress,
            open_training_models(
                ready, threads=runtime.threads, n_gpu_layers=runtime.gpu_layers, hidden_layer=training.layer
            ) as models,
        ):
            writers = {"draft": models.draft, "target": models.target}
            rollouts = training.sample(writers)
            features = training.features(models.target, rollouts)
            labels, labelled = None, "each step: its solution's outcome"
            if training.mc:
                right = training.monte_carlo(writers, rollouts, features)
                labels = monte_carlo_labels(features, right, training.mc)
                labelled = f"Monte-Carlo: {training.mc} solutions written on from each of {len(right)} steps"
            judge_fn = None
            if options["judge"]:
                held = models.judge

                def judge_fn(rows: Any) -> Any:
                    return training.judge(held, features, rows, rollouts)

            sha = ready.target.entry.sha256 or sha256_of(ready.target.path)
            report = fit_and_report(
                features,
                model_sha256=sha,
                judge=judge_fn,
                labels=labels,
                false_equation=false_equation_steps(features, rollouts),
                layer=training.layer,
                info={
                    "labels": labelled,
                    "dataset": options["dataset"],
                    "rows": options["rows"],
                    "plans": [p.key + f"*{p.samples}" for p in plans],
                    "target": ready.target.entry.name,
                    "target_file": ready.target.path.name,
                    "rollouts": len(rollouts),
                    "correct_rollouts": sum(r.correct for r in rollouts),
                },
            )
    except ValueError as exc:  # the fit: every solution right, or every one wrong
        raise UserError(
            f"Cannot fit a head: {exc}; kept {len(training_rollouts(work))} rollouts in {work}. "
            "Add problems (--limit, --rows) or a higher temperature in --plans and run again."
        ) from None
    except KeyboardInterrupt:
        done = len(training_rollouts(work))
        echo_err(f"Stopped; {done} rollouts are kept in {work}; run the same command to go on.")
        return 130
    report.head.save(out)
    for line in report.lines():
        click.echo(line)
    click.echo(
        f"\nwrote {out} ({time.monotonic() - t0:.0f} s). Use it in your models file (`specs-local models --paths`):"
    )
    click.echo(f'  reward = {{ kind = "value-head", model = "{ready.target.entry.name}", head = "{out.resolve()}" }}')
    return 0


def training_rollouts(work: Path) -> list[Any]:
    from app.eval.rollouts import read_rollouts

    return read_rollouts(work / "rollouts.jsonl")


class _RichProgress:
    """A progress bar with ETA per phase (rollouts, features, judge)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task: Any = None

    def hooks(self) -> Any:
        from app.eval.train_head import Progress as Hooks

        return Hooks(phase=self._phase, advance=self._advance)

    def _phase(self, name: str, total: int, done: int) -> None:
        if self._task is not None:
            self._bar.stop_task(self._task)
        self._task = self._bar.add_task(name, total=total, completed=done)

    def _advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def __enter__(self) -> _RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()
