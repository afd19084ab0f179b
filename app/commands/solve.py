"""`specs-local solve "question"`: one search, streamed to the terminal."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from app.config import load_catalog
from app.errors import UserError
from app.render import deferral_reason, switch_reason, unboxed_answer
from app.search.events import Deferred, Event, Finished, StepAccepted, SwitchedToDraft
from app.search.settings import METHODS, SearchSettings

SEARCH_OPTIONS: list[tuple[str, str, Any, str]] = [
    # (flag, settings field, click type, help)
    ("--n", "n", click.INT, "Candidates per step (drafts in SPECS, expansions in beam search)."),
    ("--beam-width", "beam_width", click.INT, "Prefixes kept after each step (m; 1 is the paper)."),
    ("--temperature", "temperature", click.FLOAT, "Sampling temperature (also SPECS's acceptance temperature)."),
    ("--top-p", "top_p", click.FLOAT, "Nucleus sampling mass."),
    ("--beta", "beta", click.FLOAT, "Reward weight in SPECS's tilted score."),
    ("--tau-accept", "tau_accept", click.FLOAT, "SPECS accepts drafts whose tilted score is above this."),
    (
        "--tau-switch",
        "tau_switch",
        click.FLOAT,
        "SPECS returns to the draft after a target step with a reward above this.",
    ),
    ("--rsd-delta", "rsd_delta", click.FLOAT, "RSD keeps a draft step with a reward of at least this."),
    (
        "--result-check",
        "result_check",
        click.FLOAT,
        "Scale a step's reward down when the target doubts a result after '=' (probability below this; 0 is off).",
    ),
    ("--max-steps", "max_steps", click.INT, "Most reasoning steps per solution."),
    ("--max-step-tokens", "max_step_tokens", click.INT, "Most tokens per step."),
    ("--logprob-norm", "logprob_norm", click.Choice(["mean", "sum"]), "Length normalisation of the log-ratio."),
    (
        "--answer-selection",
        "answer_selection",
        click.Choice(["best", "vote"]),
        "Best completed candidate, or a reward-weighted vote.",
    ),
    ("--seed", "seed", click.INT, "Random seed: the same seed gives the same search."),
]


def search_options(func: Any) -> Any:
    """The search parameters as options with SPECS_LOCAL_* twins (shared by
    `solve`, the app and `bench`)."""
    for flag, field, kind, help_text in reversed(SEARCH_OPTIONS):
        env = "SPECS_LOCAL_" + field.upper()
        func = click.option(flag, field, type=kind, default=None, envvar=env, help=help_text)(func)
    return func


def build_settings(preset_search: dict[str, Any], given: dict[str, Any]) -> SearchSettings:
    values = {**preset_search, **{k: v for k, v in given.items() if v is not None}}
    try:
        return SearchSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = first["loc"][0] if first["loc"] else ""
        flag = "--" + str(field).replace("_", "-") if field else "the search settings"
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"Invalid {flag}: {message}.") from None


class StepPrinter:
    """Prints accepted steps, deferrals and switches as they happen."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.steps: list[dict[str, Any]] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepAccepted):
            self.steps.append(
                {
                    "step": event.step,
                    "origin": event.origin,
                    "text": event.text,
                    "reward": event.reward,
                    "score": event.merit,
                }
            )
            if not self.quiet:
                colour = "green" if event.origin == "draft" else "yellow"
                reward = "  -  " if event.reward is None else f"{event.reward:.2f}"
                head = click.style(f"[{event.step:>2} {event.origin:<6} r={reward}]", fg=colour)
                click.echo(f"{head} {event.text.strip()}")
        elif isinstance(event, Deferred) and not self.quiet:
            click.secho(f"     deferred to the target: {deferral_reason(event)}", dim=True)
        elif isinstance(event, SwitchedToDraft) and not self.quiet:
            click.secho(f"     back to the draft: {switch_reason(event)}", dim=True)


class StopOnInterrupt:
    """First Ctrl-C asks the search to stop at the next token and keep what it
    found; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.requested.is_set()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()
        click.echo("\nStopping (Ctrl-C again to quit at once)...", err=True)

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def result_json(finished: Finished, steps: list[dict[str, Any]], method: str, preset: str) -> str:
    stats = finished.stats.to_json()
    return json.dumps(
        {
            "answer": finished.answer,
            "steps": steps,
            "solution": finished.solution,
            "stats": stats,
            "method": method,
            "preset": preset,
            "cancelled": finished.cancelled,
        },
        ensure_ascii=False,
    )


def read_question(question: str) -> str:
    if question == "-":
        question = sys.stdin.read()
    if not question.strip():
        raise UserError('The question is empty; pass it in quotes, e.g. specs-local solve "What is 12 + 30?".')
    return question.strip()


@click.command("solve")
@click.argument("question")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=None,
    envvar="SPECS_LOCAL_METHOD",
    help="Search method (default: the preset's, usually specs).",
)
@click.option(
    "--preset", default=None, envvar="SPECS_LOCAL_PRESET", help="Preset of models.toml (default: the catalog's)."
)
@search_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, steps, stats) and nothing else.")
@click.option(
    "--trace", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write every event as JSON Lines."
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the answer and the stats line.")
@click.option("--yes", "-y", is_flag=True, help="Download missing models of the preset without asking.")
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
def command(
    question: str,
    method: str | None,
    preset: str | None,
    as_json: bool,
    trace: Path | None,
    quiet: bool,
    yes: bool,
    threads: int | None,
    gpu_layers: int | None,
    **search: Any,
) -> None:
    """Solve QUESTION ("-" reads it from stdin) and stream the accepted steps.

    \b
    Examples:
      specs-local solve "What is 12 + 30?"
      specs-local solve "What is 12 + 30?" --method beam --n 8 --json
      specs-local solve - --trace run.jsonl < problem.txt
    """
    from app.hub import ensure_models
    from app.render import stats_footer
    from app.runtime import open_engines
    from app.search import run
    from app.search.trace import TraceWriter

    question = read_question(question)
    catalog = load_catalog()
    chosen = catalog.preset(preset)
    method = method or chosen.method
    settings = build_settings(chosen.search, search)
    paths = ensure_models(
        chosen,
        catalog,
        assume_yes=yes,
        interactive=sys.stdin.isatty() and not as_json,
        echo=lambda line: click.echo(line, err=True),
    )

    printer = StepPrinter(quiet=quiet or as_json)
    sinks = [printer]
    writer = TraceWriter(trace) if trace else None
    if writer:
        sinks.append(writer)

    def emit(event: Event) -> None:
        for sink in sinks:
            sink(event)

    try:
        with open_engines(chosen, catalog, settings, paths=paths, threads=threads, n_gpu_layers=gpu_layers) as engines:
            try:
                with StopOnInterrupt() as stop:
                    finished = run(method, question, engines, settings, emit=emit, should_stop=stop)
            except ValueError as exc:  # the search's one-sentence refusals (empty question, no draft)
                raise UserError(str(exc)) from None
    finally:
        if writer:
            writer.close()

    if as_json:
        click.echo(result_json(finished, printer.steps, method, chosen.name))
        return
    if finished.cancelled:
        click.secho("Stopped early; the best answer found so far:", fg="yellow", err=True)
    answer = finished.answer if finished.answer is not None else unboxed_answer(finished.solution)
    click.echo(click.style("answer: ", bold=True) + click.style(answer, bold=True, fg="cyan"))
    click.secho(stats_footer(finished.stats), dim=True)
    if finished.error:
        raise UserError(finished.error)
