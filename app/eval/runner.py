"""Run search methods side by side on a dataset and keep one JSON line per run.

Arms (a method, optionally with settings of its own) run on the same problems
with the same per-problem seed, interleaved problem by problem and in a
rotating order, so that machine noise (thermal throttling, a browser waking
up) falls on every arm alike. Each finished run is appended to
`DIR/results.jsonl` and flushed at once: an interrupted benchmark keeps what
it finished, and a rerun with the same output directory skips it.

`DIR/config.json` records what the results mean (dataset, preset, models,
search settings, runtime). A directory written under another configuration
is refused rather than mixed; choosing other problems (--limit, --ids) or
adding arms is allowed, since each line stands on its own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.errors import UserError
from app.eval.datasets import Problem
from app.eval.grading import grade_answer
from app.search.answer import last_boxed
from app.search.events import Event, Finished
from app.search.methods import needs_draft
from app.search.settings import METHODS, SearchSettings
from app.search.types import Engines
from engines.base import Cancelled

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CONFIG = "config.json"
CONFIG_VERSION = 1
# The parts of config.json that change what a result line means.
IDENTITY_KEYS = ("dataset", "preset", "models", "reward", "settings", "runtime")
# The statistics a result line keeps (Stats.to_json), in its order; "acceptance" follows them.
ROW_STATS = (
    "wall_seconds",
    "overhead_seconds",
    "models",
    "steps",
    "draft_steps",
    "target_steps",
    "deferrals",
    "switches",
    "answer_forced",
)

EnginesFactory = Callable[[], AbstractContextManager[Engines]]
SearchFn = Callable[..., Finished]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Arm:
    """One column of the comparison: a method, maybe with its own settings."""

    label: str  # the `method` field of result lines
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_methods(text: str) -> list[Arm]:
    """`specs,beam,greedy` -> arms; an unknown name is the user's to fix."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError(f"--methods is empty; name one or more of {', '.join(METHODS)}.")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"Unknown method {unknown[0]!r} in --methods; choose from {', '.join(METHODS)}.")
    return [Arm(m, m) for m in dict.fromkeys(names)]


def check_draft(arms: Sequence[Arm], has_draft: bool, preset: str = "the engines") -> None:
    needing = [a.method for a in arms if needs_draft(a.method)]
    if needing and not has_draft:
        raise UserError(
            f"{needing[0]} needs a draft model and {preset} has none; choose a preset with a draft or drop {needing[0]}."
        )


def problem_seed(seed: int, problem_id: str) -> int:
    """The same seed for every arm on a problem, a different one per problem."""
    return zlib.crc32(f"{seed}:{problem_id}".encode()) & 0x7FFFFFFF


# --- the output directory ------------------------------------------------------


def claim_out_dir(out_dir: Path, config: dict[str, Any], arms: Sequence[Arm]) -> None:
    """Create DIR/config.json, or check that DIR was written by this configuration."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG
    recorded_arms: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise UserError(
                f"{path} is not a benchmark configuration; pass another --out or delete {out_dir}."
            ) from None
        difference = _first_difference(
            {k: old.get(k) for k in IDENTITY_KEYS}, {k: config.get(k) for k in IDENTITY_KEYS}
        )
        recorded_arms = old.get("arms", {})
        for arm in arms:
            if arm.label in recorded_arms and recorded_arms[arm.label] != _arm_json(arm):
                difference = f"arms.{arm.label} was {recorded_arms[arm.label]}, now {_arm_json(arm)}"
        if difference:
            raise UserError(
                f"{out_dir} holds results of another configuration ({difference}); "
                "pass a new --out, or delete the directory to start over."
            )
    merged = {**config, "version": CONFIG_VERSION, "arms": {**recorded_arms, **{a.label: _arm_json(a) for a in arms}}}
    # Written aside and renamed, so that a full disk or a kill leaves the old file whole.
    aside = path.with_name(path.name + ".new")
    try:
        aside.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(aside, path)
    except OSError as exc:
        aside.unlink(missing_ok=True)
        raise ResultsNotWritten(
            f"Cannot write {path} ({exc.strerror or type(exc).__name__}); free some space or fix the folder's"
            " permissions, then run the same command again."
        ) from None


def _arm_json(arm: Arm) -> dict[str, Any]:
    return {"method": arm.method, "overrides": arm.overrides}


def _first_difference(old: Any, new: Any, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if old == new else f"{where} was {old!r}, now {new!r}"


def read_results(out_dir: Path) -> list[dict[str, Any]]:
    """The result lines of DIR, the last one per (id, method); torn lines are dropped."""
    path = out_dir / RESULTS
    if not path.is_file():
        return []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                latest[(str(row["id"]), str(row["method"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill; its run is redone
    return list(latest.values())


class ResultsNotWritten(UserError):
    """The disk filled up (or refused) while results were written; what was written stays whole."""


@contextmanager
def _appender(path: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A writer of whole lines: a line the disk takes only in part is cut off again,
    so the file always ends after its last whole result and a rerun resumes from it."""
    # A kill mid-write can leave a line without its newline; start a fresh one.
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as tail:
            tail.seek(-1, 2)
            torn = tail.read(1) != b"\n"
    else:
        torn = False
    # Unbuffered: a failed write leaves nothing in a buffer to land later.
    with open(path, "ab", buffering=0) as f:
        whole = f.seek(0, os.SEEK_END)

        def append(data: bytes) -> None:
            nonlocal whole
            try:
                view = memoryview(data)
                while view:
                    written = f.write(view)
                    view = view[written or 0 :]
            except OSError as exc:
                os.ftruncate(f.fileno(), whole)
                raise ResultsNotWritten(
                    f"Cannot write {path} ({exc.strerror or type(exc).__name__}); the runs finished before are kept"
                    " whole in it: free some space and run the same command again to resume."
                ) from None
            whole += len(data)

        if torn:
            append(b"\n")

        def write(row: dict[str, Any]) -> None:
            append((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

        yield write


# --- progress ---------------------------------------------------------------------


class Progress(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def advance(self, row: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


# --- running ----------------------------------------------------------------------


@dataclass
class Outcome:
    total: int  # runs the selection asks for
    already: int  # found done in DIR
    ran: int  # written this time
    errors: int  # of those, runs that raised
    interrupted: bool = False

    @property
    def remaining(self) -> int:
        return self.total - self.already - self.ran


def run_bench(
    problems: Sequence[Problem],
    arms: Sequence[Arm],
    settings: SearchSettings,
    out_dir: Path,
    open_engines: EnginesFactory,
    *,
    config: dict[str, Any],
    trace_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock = time.monotonic,
    progress: Progress | None = None,
    retry_errors: bool = False,
    search: SearchFn | None = None,
    parallel: int = 1,
) -> Outcome:
    """Run every arm on every problem not yet done in `out_dir`.

    `open_engines` is entered only when there is work left. A KeyboardInterrupt
    or `should_stop` ends the run between (or, through the search, inside)
    runs; finished lines stay written and the outcome says `interrupted`.

    `parallel` > 1 runs that many problems at once, each worker on engines of
    its own (`open_engines` is entered once per worker: meant for models on
    servers, where that costs a connection, not a load). A run's search stays
    sequential and its latency is its own; a run's line does not depend on
    which worker ran it, only the order of the lines does.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, not {parallel}")
    if search is None:
        from app.search import run

        search = run
    claim_out_dir(out_dir, config, arms)
    done = {(str(r["id"]), str(r["method"])) for r in read_results(out_dir) if not (retry_errors and r.get("error"))}
    todo = [
        (problem, arm)
        for index, problem in enumerate(problems)
        for arm in _rotated(arms, index)
        if (problem.id, arm.label) not in done
    ]
    outcome = Outcome(total=len(problems) * len(arms), already=len(problems) * len(arms) - len(todo), ran=0, errors=0)
    if not todo:
        return outcome
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress.start(outcome.total, outcome.already)
    queue = iter(todo)
    lock = threading.Lock()
    halt = threading.Event()  # a worker was cancelled or failed, or Ctrl-C: the others stop too

    def stopped() -> bool:
        return halt.is_set() or (should_stop is not None and should_stop())

    def work(engines: Engines, write: Callable[[dict[str, Any]], None]) -> None:
        check_draft(arms, engines.draft is not None)
        while True:
            if stopped():
                outcome.interrupted = True
                return
            with lock:
                item = next(queue, None)
            if item is None:
                return
            problem, arm = item
            row = _run_one(problem, arm, settings, engines, search, clock, stopped, trace_dir)
            with lock:
                if row is None:  # the search was cancelled mid-run: nothing to keep
                    outcome.interrupted = True
                    halt.set()
                    return
                write(row)
                outcome.ran += 1
                outcome.errors += bool(row["error"])
                if progress is not None:
                    progress.advance(row)

    try:
        if parallel == 1:
            with open_engines() as engines, _appender(out_dir / RESULTS) as write:
                work(engines, write)
        else:
            with _appender(out_dir / RESULTS) as write:
                _run_workers(parallel, open_engines, work, write, halt)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        if progress is not None:
            progress.stop()
    return outcome


def _run_workers(
    parallel: int,
    open_engines: EnginesFactory,
    work: Callable[[Engines, Callable[[dict[str, Any]], None]], None],
    write: Callable[[dict[str, Any]], None],
    halt: threading.Event,
) -> None:
    """`parallel` threads, each working on engines of its own. The first failure
    stops the others and is raised; Ctrl-C stops them and is raised too."""
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with open_engines() as engines:
                work(engines, write)
        except BaseException as exc:
            failures.append(exc)
            halt.set()

    threads = [threading.Thread(target=worker, name=f"bench-{i}", daemon=True) for i in range(parallel)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
    except KeyboardInterrupt:
        halt.set()
        for thread in threads:
            thread.join()
        raise
    if failures:
        raise failures[0]


def _rotated(arms: Sequence[Arm], index: int) -> list[Arm]:
    shift = index % len(arms)
    return [*arms[shift:], *arms[:shift]]


def _run_one(
    problem: Problem,
    arm: Arm,
    base: SearchSettings,
    engines: Engines,
    search: SearchFn,
    clock: Clock,
    should_stop: Callable[[], bool] | None,
    trace_dir: Path | None,
) -> dict[str, Any] | None:
    seed = problem_seed(base.seed, problem.id)
    settings = SearchSettings(**{**base.model_dump(), **arm.overrides, "seed": seed})
    row: dict[str, Any] = {"id": problem.id, "method": arm.label, "search": arm.method, "seed": seed}
    if arm.overrides:
        row["settings"] = arm.overrides
    with _trace_sink(trace_dir, problem.id, arm.label) as emit:
        start = clock()
        try:
            finished = search(
                arm.method, problem.problem, engines, settings, emit=emit, should_stop=should_stop, clock=clock
            )
        except Cancelled:
            return None
        except Exception as exc:  # one problem's failure (context full, a bug) must not end the benchmark
            log.warning("%s on %s failed", arm.label, problem.id, exc_info=True)
            return {**row, **_failed(problem, clock() - start, f"{type(exc).__name__}: {exc}")}
        latency = clock() - start
    if finished.cancelled:
        return None
    answer = finished.answer if finished.answer is not None else last_boxed(finished.solution)
    graded = grade_answer(answer, problem.answer)
    stats = finished.stats.to_json()
    return {
        **row,
        "answer": answer,
        "reference": problem.answer,
        "correct": graded.correct,
        "judge": graded.judge,
        "latency": latency,
        **{key: stats[key] for key in ROW_STATS},
        "acceptance": stats["acceptance_rate"],
        "error": finished.error,
    }


def _failed(problem: Problem, latency: float, error: str) -> dict[str, Any]:
    return {
        "answer": None,
        "reference": problem.answer,
        "correct": False,
        "judge": "none",
        "latency": latency,
        "wall_seconds": latency,
        "overhead_seconds": 0.0,
        "models": {},
        "steps": 0,
        "draft_steps": 0,
        "target_steps": 0,
        "deferrals": 0,
        "switches": 0,
        "answer_forced": False,
        "acceptance": 0.0,
        "error": error,
    }


@contextmanager
def _trace_sink(trace_dir: Path | None, problem_id: str, label: str) -> Iterator[Callable[[Event], None]]:
    if trace_dir is None:
        yield lambda event: None
        return
    from app.search.trace import TraceWriter

    with TraceWriter(trace_dir / trace_name(problem_id, label)) as writer:
        yield writer
    if writer.failure:  # before the run's line is written, so that the rerun runs it (and its trace) again
        raise ResultsNotWritten(f"{writer.failure}; free some space and run the same command again to resume.")


def trace_name(problem_id: str, label: str) -> str:
    return f"{_safe_name(problem_id)}.{_safe_name(label)}.jsonl"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)


class RichProgress:
    """A progress bar with ETA and running accuracy per arm, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichBar

        self._bar = RichBar(
            TextColumn("[bold]bench"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[scores]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: Any = None
        self._scores: dict[str, list[int]] = {}

    def start(self, total: int, done: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("bench", total=total, completed=done, scores="")

    def advance(self, row: dict[str, Any]) -> None:
        right, seen = self._scores.setdefault(row["method"], [0, 0])
        self._scores[row["method"]] = [right + bool(row["correct"]), seen + 1]
        scores = "  ".join(f"{m} {r}/{n}" for m, (r, n) in self._scores.items())
        self._bar.update(self._task, advance=1, scores=scores)

    def stop(self) -> None:
        self._bar.stop()
