"""Traces: every event of a search as one JSON line, and back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import IO

from pydantic import TypeAdapter

from .events import EVENT_TYPES, Event, Finished


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
    data = json.loads(line)
    name = data.pop("event", None)
    if name not in EVENT_TYPES:
        raise TraceError(f"unknown event {name!r}")
    return _adapter(name).validate_python(data)


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
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield event_from_json(line)
            except (ValueError, TypeError) as exc:
                raise TraceError(f"{path}:{number}: not a specs-local event ({exc})") from None


def write_trace(path: Path | str, events: Iterable[Event]) -> None:
    with TraceWriter(path) as sink:
        for event in events:
            sink(event)
