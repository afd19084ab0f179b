"""Traces: every event of a search as one JSON line, and back.

Traces written by earlier versions load as today's events: `_Upgrade`
rewrites their lines as it reads them (one search per trace, so it learns
the method from the first line).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter

from .events import EVENT_TYPES, Event, Finished
from .methods import REGISTRY


class TraceError(ValueError):
    """A trace line is not an event this version knows."""


def event_to_json(event: Event) -> str:
    data = asdict(event)
    if isinstance(event, Finished):
        data["stats"] = event.stats.to_json(derived=False)
    return json.dumps({"event": type(event).__name__, **data}, ensure_ascii=False)


@cache
def _adapter(name: str) -> TypeAdapter:
    return TypeAdapter(EVENT_TYPES[name])


def event_from_json(line: str) -> Event:
    """One line of a trace written by this version."""
    return _event(json.loads(line))


def _event(data: dict[str, Any]) -> Event:
    name = data.pop("event", None)
    if name not in EVENT_TYPES:
        raise TraceError(f"unknown event {name!r}")
    return _adapter(name).validate_python(data)


class _Upgrade:
    """Rewrites lines of traces written before the method registry into today's fields.

    Those traces had no thresholds in SearchStarted: they come from the
    registry and the run's settings.
    """

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("event") == "SearchStarted" and "thresholds" not in data:
            spec = REGISTRY.get(data.get("method", ""))
            data["thresholds"] = [asdict(t) for t in spec.thresholds_in(data.get("settings", {}))] if spec else []
        return data


class TraceWriter:
    """An event sink that appends JSON lines to a file, flushed per event."""

    def __init__(self, path: Path | str) -> None:
        # Open for the writer's lifetime; `close` ends it.
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def __call__(self, event: Event) -> None:
        self._file.write(event_to_json(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: Path | str) -> Iterator[Event]:
    """The events of a trace, from this version or an earlier one."""
    upgrade = _Upgrade()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("a JSON object per line is expected")
                yield _event(upgrade(data))
            except (ValueError, TypeError, KeyError) as exc:
                raise TraceError(f"{path}:{number}: not a specs-local event ({exc})") from None


def write_trace(path: Path | str, events: Iterable[Event]) -> None:
    with TraceWriter(path) as sink:
        for event in events:
            sink(event)
