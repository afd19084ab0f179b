"""Running one job at a time: a search of the question (by one method, or by
two to compare them) or a recorded trace played back.

Threads and the UI meet here: the job runs in a thread worker of the app and
hands its events to an `EventBuffer`; a 10 Hz timer on the UI thread drains it
and posts one `SearchEvents` message per batch, then the `SearchEnded` the
thread left behind. The thread never touches a widget, and its `emit` is an
append under a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App
from textual.notifications import SeverityLevel
from textual.timer import Timer
from textual.worker import get_current_worker

from app.config import Catalog, ConfigError, Preset
from app.errors import UserError
from app.search.events import Event, Finished
from app.search.methods import draftless_methods, needs_draft
from app.search.settings import SearchSettings
from app.tui.engines import EngineCache
from app.tui.messages import RunOutcome, SearchEnded, SearchEvents, StatusChanged
from app.tui.pump import EventBuffer, play
from engines.base import EngineError

log = logging.getLogger(__name__)

# Screen updates per second at most: smooth enough for streaming text, and each
# update costs the search thread a few milliseconds of the GIL.
REFRESH_HZ = 10
# Streamed draft text alone repaints at most this often; decisions (scores,
# fates, deferrals) still show within 1 / REFRESH_HZ.
PROGRESS_HZ = 5
SEARCH_GROUP = "search"

SearchFn = Callable[..., Finished]
MissingModelsFn = Callable[[Preset, Catalog], Sequence[object]]
SettingsFn = Callable[[Preset], SearchSettings]


@dataclass
class Job:
    id: int
    question: str
    preset: Preset
    methods: tuple[str, ...]
    settings: SearchSettings


@dataclass
class Replay:
    """A recorded trace to play instead of searching."""

    events: list[Event]
    speed: float = 1.0
    name: str = "trace"
    note: str | None = None  # what the status line adds, e.g. that the trace's last line was cut


class Refused(Exception):
    """A job that cannot start; the message says why and what to do instead."""

    def __init__(self, message: str, *, title: str = "", severity: SeverityLevel = "warning") -> None:
        super().__init__(message)
        self.title = title
        self.severity: SeverityLevel = severity


class ModelsMissing(Exception):
    """The preset's models are not on this machine (yet)."""

    def __init__(self, preset: str, names: list[str]) -> None:
        super().__init__(f"The {preset} models are not downloaded yet.")
        self.preset = preset
        self.names = names


def describe_model(item: object) -> str:
    """A catalog entry as `name (file)`; anything else as its text."""
    name, file = getattr(item, "name", None), getattr(item, "file", None)
    if name and file:
        return f"{name} ({file})"
    return str(name or item)


def ended_line(ended: SearchEnded, job: Job | None) -> str:
    """How `job` (None: a replay) went, for the status line."""
    if ended.error:
        return f"Search failed: {ended.error}  Fix it, or try another question."
    if job is None:
        return "Replay finished."
    if ended.outcomes and ended.outcomes[-1].finished.cancelled:
        return "Cancelled; the best answer so far is shown."
    if len(ended.outcomes) < len(job.methods):
        return "Cancelled."
    return "Done. ctrl+o copies the answer; ctrl+s solves again."


class JobControl:
    """Starts, cancels and ends the jobs of `app`, one at a time.

    Without engines (a replay) it only plays traces.
    """

    def __init__(
        self,
        app: App[Any],
        catalog: Catalog,
        *,
        engines: EngineCache | None,
        search: SearchFn,
        settings: SettingsFn,
        missing_models: MissingModelsFn,
        clock: Callable[[], float],
        log_path: Path | None,
    ) -> None:
        self._app = app
        self._catalog = catalog
        self._engines = engines
        self._search_fn = search
        self._settings = settings
        self._missing_models = missing_models
        self._clock = clock
        self._log_path = log_path
        self.buffer = EventBuffer()
        self.running = False
        self.job: Job | None = None  # None while a replay plays
        self.last_ended: SearchEnded | None = None
        self._job_ids = 0
        self._pull_timer: Timer | None = None
        self._last_batch = 0.0

    # -- planning ----------------------------------------------------------------------

    def missing(self, preset: Preset) -> list[str]:
        """The preset's models that are not on this machine, as `name (file)`."""
        return [describe_model(m) for m in self._missing_models(preset, self._catalog)]

    def plan(self, question: str, preset_name: str, methods: tuple[str, ...]) -> Job:
        """The job that searches `question`; Refused or ModelsMissing when it cannot run."""
        try:
            preset = self._catalog.preset(preset_name)
            settings = self._settings(preset)
        except (ConfigError, UserError) as exc:
            raise Refused(str(exc), title="Settings", severity="error") from exc
        if preset.draft is None and any(needs_draft(m) for m in methods):
            raise Refused(
                f"The preset {preset.name} has no draft model; choose {draftless_methods()}, or another preset."
            )
        missing = self.missing(preset)
        if missing:
            raise ModelsMissing(preset.name, missing)
        self._job_ids += 1
        return Job(self._job_ids, question, preset, methods, settings)

    # -- starting, cancelling, ending -------------------------------------------------------

    def search(self, job: Job) -> None:
        self._begin(job)
        self._run_in_thread(partial(self._search, job), "search")

    def replay(self, replay: Replay) -> None:
        self._begin(None)
        self._run_in_thread(partial(self._play, replay), "replay")

    def cancel(self) -> None:
        self._app.workers.cancel_group(self._app, SEARCH_GROUP)

    def ended(self, message: SearchEnded) -> None:
        """The job's thread has returned: the next job may start."""
        self.running = False
        self.last_ended = message
        if self._pull_timer is not None:
            self._pull_timer.pause()

    def _begin(self, job: Job | None) -> None:
        self.running = True
        self.job = job
        self.last_ended = None
        if self._pull_timer is None:
            self._pull_timer = self._app.set_interval(1 / REFRESH_HZ, self._pull)
        else:
            self._pull_timer.resume()

    def _run_in_thread(self, work: Callable[[], None], name: str) -> None:
        # One job at a time; its failures come back in SearchEnded, never by exiting the app.
        self._app.run_worker(work, name=name, group=SEARCH_GROUP, thread=True, exclusive=True, exit_on_error=False)

    # -- on the UI thread ----------------------------------------------------------------------

    def _pull(self) -> None:
        now = time.monotonic()
        if now - self._last_batch < 1 / PROGRESS_HZ and self.buffer.only_progress():
            return  # the waiting snapshots keep coalescing until a later tick
        events, ended = self.buffer.drain()
        if events:
            self._last_batch = now
            self._app.post_message(SearchEvents(tuple(events)))
        if ended is not None:
            assert isinstance(ended, SearchEnded)
            self._app.post_message(ended)

    # -- in the worker thread ------------------------------------------------------------------

    def _search(self, job: Job) -> None:
        worker = get_current_worker()
        outcomes: list[RunOutcome] = []
        error: str | None = None
        assert self._engines is not None, "a viewer has no engines to search with"
        try:
            loaded = self._engines.is_open(job.preset, job.settings)
            self._app.post_message(StatusChanged("Starting…" if loaded else f"Loading the {job.preset.name} models…"))
            with self._engines.use(job.preset, self._catalog, job.settings) as engines:
                for method in job.methods:
                    if worker.is_cancelled:
                        break
                    self._app.post_message(StatusChanged(f"{method} on {job.preset.name}: searching…"))
                    finished = self._search_fn(
                        method,
                        job.question,
                        engines,
                        job.settings,
                        emit=self.buffer.emit,
                        should_stop=lambda: worker.is_cancelled,
                        clock=self._clock,
                    )
                    outcomes.append(RunOutcome(method, finished))
        except (UserError, ConfigError, EngineError, ValueError) as exc:
            # Said in one sentence by whoever raised it (ValueError: the search's refusals).
            error = str(exc)
        except Exception as exc:
            log.exception("search failed")
            error = f"{type(exc).__name__}: {exc}" + (f" (details in {self._log_path})" if self._log_path else "")
        finally:
            self.buffer.finish(SearchEnded(job.id, outcomes, error))

    def _play(self, replay: Replay) -> None:
        worker = get_current_worker()
        error: str | None = None
        try:
            note = f" ({replay.note})" if replay.note else ""
            self._app.post_message(StatusChanged(f"Replaying {replay.name} at {replay.speed:g}x…{note}"))
            play(replay.events, replay.speed, self.buffer.emit, lambda: worker.is_cancelled)
        except Exception as exc:
            log.exception("replay failed")
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.buffer.finish(SearchEnded(0, [], error))
