"""Traces: every event of a search as one JSON line, and back.

Traces written by earlier versions load as today's events: `_Upgrade`
rewrites their lines as it reads them (one search per trace, so it learns
the method from the first line).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter, ValidationError

from .events import EVENT_TYPES, Event, Finished
from .methods import REGISTRY, THRESHOLDS


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


# What the sentence of an old Deferred said about the arithmetic check.
_DOUBTED = re.compile(r"the target doubted a result in (\d+) of (\d+) \(p = ([^)]+)\)")
# Old traces: the threshold each method deferred by, and SPECS's return to the draft.
_OLD_DEFERRAL_THRESHOLD = {"specs": "tau_accept", "rsd": "rsd_delta"}
_OLD_SWITCH_THRESHOLD = "tau_switch"
# Old traces: the methods whose `score` was the tilted score.
_OLD_TILTING = {"specs"}


class _Upgrade:
    """Rewrites lines of traces written before the method registry into today's fields.

    Those traces had no thresholds in SearchStarted (they come from the
    registry and the run's settings), one `score` where today there are three
    numbers (SPECS scored by the tilted score; the other methods by the
    reward of a judged candidate and by the log-probability of any other),
    a sentence in Deferred where today there are numbers, and bare numbers
    for thresholds.
    """

    def __init__(self) -> None:
        self.method = ""
        self.settings: dict[str, Any] = {}
        self.rewards: dict[str, float] = {}  # candidate id -> reward, of the judged ones

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        name = data.get("event")
        if name == "SearchStarted":
            self.method, self.settings, self.rewards = data.get("method", ""), data.get("settings", {}), {}
            if "thresholds" not in data:
                spec = REGISTRY.get(self.method)
                data["thresholds"] = [asdict(t) for t in spec.thresholds_in(self.settings)] if spec else []
        elif name == "CandidatesScored":
            for score in data.get("scores", []):
                self.rewards[score["id"]] = score["reward"]
                if "score" in score:
                    old = score.pop("score")
                    if self.method in _OLD_TILTING:
                        score["tilted"] = old
        elif name in ("StepAccepted", "CandidateCompleted") and "score" in data:
            old = data.pop("score")
            data.setdefault("reward", self.rewards.get(data.get("id", "")))
            if self.method in _OLD_TILTING:
                data["tilted"] = old
            elif data["reward"] is None:
                data["logprob"] = old
        elif name == "Deferred" and "best_score" in data:
            data["best"] = data.pop("best_score")
            data["threshold"] = self._threshold(_OLD_DEFERRAL_THRESHOLD.get(self.method, ""), data["threshold"])
            doubted = _DOUBTED.search(data.pop("reason", ""))
            data["doubted"] = int(doubted.group(1)) if doubted else 0
            data["drafts"] = int(doubted.group(2)) if doubted else 0
            data["lowest_result_prob"] = float(doubted.group(3)) if doubted else None
        elif name == "SwitchedToDraft" and isinstance(data.get("threshold"), (int, float)):
            data["threshold"] = self._threshold(_OLD_SWITCH_THRESHOLD, data["threshold"])
        return data

    def _threshold(self, setting: str, value: float) -> dict[str, Any]:
        spec = THRESHOLDS.get(setting)
        if spec is None:  # a method this version does not know
            return {"name": setting, "symbol": setting, "value": value, "bounds": "reward"}
        return asdict(spec.at(value))


class TraceWriter:
    """An event sink that writes each event as one JSON line, at once.

    A line the disk takes only in part (a full disk) is cut off again, and
    writing stops there: the file keeps every event before it, each whole,
    and `failure` says what happened (the start of a sentence: the caller
    knows the fix). The search itself goes on; the caller reports the failure
    when it ends.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # Unbuffered and open for the writer's lifetime (`close` ends it): a failed
        # write leaves nothing in a buffer to land later.
        self._file: IO[bytes] | None = open(self.path, "wb", buffering=0)  # noqa: SIM115 (see above)
        self.written = 0  # whole events in the file
        self._whole = 0  # its length after the last whole event
        self.failure: str | None = None

    def __call__(self, event: Event) -> None:
        if self._file is None:
            return
        data = (event_to_json(event) + "\n").encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view) or 0 :]
        except OSError as exc:
            os.ftruncate(self._file.fileno(), self._whole)
            self.close()
            self.failure = (
                f"Cannot write the trace {self.path} ({exc.strerror or type(exc).__name__}): it holds the first"
                f" {self.written} events, each whole"
            )
            return
        self._whole += len(data)
        self.written += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: Path | str) -> Iterator[Event]:
    """The events of a trace, from this version or an earlier one; any line that is
    not an event is a TraceError."""
    upgrade = _Upgrade()
    for number, line in _numbered_lines(path):
        try:
            yield _parse_line(line, upgrade)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise TraceError(f"{path}:{number}: not a specs-local event ({_reason(exc)})") from None


@dataclass(frozen=True)
class TraceFile:
    """The whole events of a trace file, and the number of its last line if a crash cut it short."""

    events: list[Event]
    cut_line: int | None = None


def load_trace(path: Path | str) -> TraceFile:
    """Like `read_trace`, except that a last line without its newline that is not an
    event was cut short by a crash mid-write: it is left out and named, not refused."""
    lines = list(_numbered_lines(path))
    cut = lines[-1][0] if lines and not lines[-1][1].endswith(b"\n") else None
    events: list[Event] = []
    upgrade = _Upgrade()
    for number, line in lines:
        try:
            events.append(_parse_line(line, upgrade))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            if number == cut:
                return TraceFile(events, cut_line=number)
            raise TraceError(f"{path}:{number}: not a specs-local event ({_reason(exc)})") from None
    return TraceFile(events)


def _reason(exc: Exception) -> str:
    """Why a line is not an event, on one line (pydantic explains over several)."""
    text = str(exc)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        text = f"{first['msg']} at {where}" if where else first["msg"]
    return " ".join(text.split()) or type(exc).__name__


def _numbered_lines(path: Path | str) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a trace with their numbers, each with its newline if it has one
    (bytes: a line cut inside a character is still a line, and fails as one)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def _parse_line(line: bytes, upgrade: _Upgrade) -> Event:
    data = json.loads(line.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a JSON object per line is expected")
    return _event(upgrade(data))


def write_trace(path: Path | str, events: Iterable[Event]) -> None:
    with TraceWriter(path) as sink:
        for event in events:
            sink(event)
