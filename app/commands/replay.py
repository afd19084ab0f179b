"""`specs-local replay TRACE.jsonl`: play a saved search in the terminal app."""

from __future__ import annotations

from pathlib import Path

import click

from app.errors import UserError
from app.search.trace import TraceError, TraceFile, load_trace


def load_events(path: Path) -> TraceFile:
    """The trace's whole events; a last line cut short by a crash is left out (and named)."""
    try:
        trace = load_trace(path)
    except TraceError as exc:
        raise UserError(f"{exc}; pass a trace written by `specs-local solve --trace`.") from None
    except (OSError, RecursionError) as exc:
        raise UserError(f"Cannot read {path} ({exc}); pass a trace written by `specs-local solve --trace`.") from None
    if not trace.events:
        what = "only a cut line" if trace.cut_line else "no events"
        raise UserError(f"{path} holds {what}; pass a trace written by `specs-local solve --trace`.")
    return trace


def cut_note(path: Path, trace: TraceFile) -> str | None:
    if trace.cut_line is None:
        return None
    return (
        f"line {trace.cut_line} of {path.name} was cut short (the search that wrote it stopped mid-line);"
        f" the {len(trace.events)} whole events before it are played"
    )


@click.command("replay")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    envvar="SPECS_LOCAL_REPLAY_SPEED",
    help="Play this many times faster than the search ran.",
)
def command(trace: Path, speed: float) -> None:
    """Play TRACE (JSON Lines from `solve --trace`) in the terminal app, paced by
    the events' timestamps.

    \b
    Examples:
      specs-local solve "What is 12 + 30?" --trace run.jsonl
      specs-local replay run.jsonl
      specs-local replay run.jsonl --speed 10
    """
    from app.config import load_catalog
    from app.tui.app import Replay, SpecsApp
    from app.tui.logfile import default_log_path, divert_logging

    loaded = load_events(trace)
    note = cut_note(trace, loaded)
    if note:
        click.secho(f"warning: {note}.", fg="yellow", err=True)
    app = SpecsApp(
        load_catalog(),
        replay=Replay(loaded.events, speed=speed, name=trace.name, note=note),
    )
    with divert_logging(default_log_path()):
        app.run()
