"""`specs-local replay TRACE.jsonl`: play a saved search in the terminal app."""

from __future__ import annotations

from pathlib import Path

import click

from app.errors import UserError
from app.search.events import Event
from app.search.trace import TraceError, read_trace


def load_events(path: Path) -> list[Event]:
    try:
        events = list(read_trace(path))
    except TraceError as exc:
        raise UserError(f"{exc}; pass a trace written by `specs-local solve --trace`.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read {path} ({exc}); pass a trace written by `specs-local solve --trace`.") from None
    if not events:
        raise UserError(f"{path} holds no events; pass a trace written by `specs-local solve --trace`.")
    return events


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

    events = load_events(trace)
    app = SpecsApp(
        load_catalog(),
        replay=Replay(events, speed=speed, name=trace.name),
    )
    with divert_logging(default_log_path()):
        app.run()
