"""`specs-local solve "question"`: one search, streamed to the terminal."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from app.commands.common import (
    Consent,
    RuntimeOptions,
    build_settings,
    check_output_file,
    method_option,
    open_preset,
    preset_option,
    reward_option,
    runtime_options,
    search_options,
    with_reward,
    yes_option,
)
from app.config import load_catalog
from app.errors import UserError
from app.presets import resolve_preset
from app.render import deferral_reason, switch_reason, unboxed_answer
from app.search.events import Deferred, Event, Finished, StepAccepted, SwitchedToDraft


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
@method_option("Search method (default: the preset's, usually specs).")
@preset_option()
@search_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, steps, stats) and nothing else.")
@click.option(
    "--trace", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write every event as JSON Lines."
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the answer and the stats line.")
@reward_option
@yes_option()
@runtime_options
def command(
    question: str,
    method: str | None,
    preset: str | None,
    reward: str | None,
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
    from app.render import stats_footer
    from app.search import run
    from app.search.trace import TraceWriter

    question = read_question(question)
    if trace is not None:
        trace = check_output_file(trace, "--trace")
    chosen = with_reward(resolve_preset(load_catalog(), preset), reward)
    method = method or chosen.preset.method
    settings = build_settings(chosen.preset.search, search)
    consent = Consent(assume_yes=yes, interactive=sys.stdin.isatty() and not as_json)

    printer = StepPrinter(quiet=quiet or as_json)
    runtime = RuntimeOptions(threads, gpu_layers)
    with open_preset(chosen, settings, runtime=runtime, consent=consent) as engines:
        sinks: list[Callable[[Event], None]] = [printer]
        writer = TraceWriter(trace) if trace else None
        if writer:
            sinks.append(writer)

        def emit(event: Event) -> None:
            for sink in sinks:
                sink(event)

        try:
            with StopOnInterrupt() as stop:
                finished = run(method, question, engines, settings, emit=emit, should_stop=stop)
        except ValueError as exc:  # the search's one-sentence refusals (empty question, no draft)
            raise UserError(str(exc)) from None
        finally:
            if writer:
                writer.close()

    # The answer is shown even when the trace could not be written; the failure follows it.
    trace_failure = (
        f"{writer.failure}; free some space and solve again for the whole trace." if writer and writer.failure else None
    )
    if as_json:
        click.echo(result_json(finished, printer.steps, method, chosen.name))
        if trace_failure:
            raise UserError(trace_failure)
        return
    if finished.cancelled:
        click.secho("Stopped early; the best answer found so far:", fg="yellow", err=True)
    answer = finished.answer if finished.answer is not None else unboxed_answer(finished.solution)
    click.echo(click.style("answer: ", bold=True) + click.style(answer, bold=True, fg="cyan"))
    click.secho(stats_footer(finished.stats), dim=True)
    if finished.error:
        raise UserError(finished.error)
    if trace_failure:
        raise UserError(trace_failure)
