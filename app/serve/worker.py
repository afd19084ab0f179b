"""One search at a time on the loaded models, fed by a bounded queue.

The models hold one KV cache each, so searches cannot overlap: a single
thread takes jobs in order. A request handler (on the event loop) submits a
`Job` and reads its updates from an asyncio queue; the search thread posts
them with `call_soon_threadsafe`. Setting `job.cancel` stops a search at its
next token (it is the search's `should_stop`) or drops a job still waiting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from app.search import run
from app.search.events import Event, SearchStarted
from app.search.settings import SearchSettings
from app.search.types import Engines
from app.serve.protocol import APIError
from app.serve.reply import Outcome, Transcript
from engines.base import SYSTEM_PROMPT, ContextFullError, EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Began:
    """The prompt fits the models and the search runs: the reply can start."""


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class Done:
    outcome: Outcome


@dataclass(frozen=True)
class Failed:
    error: APIError


@dataclass(frozen=True)
class Dropped:
    """Cancelled before its search began (the client left, or the server is stopping)."""


Update = Began | Reasoning | Done | Failed | Dropped


@dataclass(eq=False)
class Job:
    method: str
    question: str
    settings: SearchSettings
    loop: asyncio.AbstractEventLoop
    updates: asyncio.Queue[Update] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, update: Update) -> None:
        """Hand an update to the request's event loop (from the search thread)."""
        try:
            self.loop.call_soon_threadsafe(self.updates.put_nowait, update)
        except RuntimeError:  # the loop has closed: the server stopped and nobody reads this job
            self.cancel.set()


class SearchWorker:
    """The search thread: runs jobs one by one; `queue_size` jobs may wait."""

    def __init__(self, engines: Engines, preset: str, *, queue_size: int) -> None:
        self.engines = engines
        self.preset = preset
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name="specs-search", daemon=True)
        self._current: Job | None = None
        self._seconds: deque[float] = deque(maxlen=8)  # of recent searches, for Retry-After

    # -- the event loop's side ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse with 429 when `queue_size` jobs already wait."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            wait = self.retry_after()
            raise APIError(
                429,
                f"The server is busy: one search runs and {self._jobs.maxsize} wait; retry in about {wait} s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            ) from None

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: about one search."""
        recent = list(self._seconds)
        return max(1, math.ceil(sum(recent) / len(recent))) if recent else 1

    @property
    def searching(self) -> bool:
        return self._current is not None

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def cancel_all(self) -> None:
        """Stop the running search and drop the waiting ones (the server is stopping)."""
        current = self._current
        if current is not None:
            current.cancel.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
                job.post(Dropped())

    def close(self) -> None:
        """Cancel everything and wait for the search thread, so that the models can be freed."""
        self.cancel_all()
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    # -- the search thread --------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancel.is_set():
                job.post(Dropped())
                continue
            self._current = job
            t0 = time.monotonic()
            try:
                job.post(Done(self._solve(job)))
            except APIError as exc:
                job.post(Failed(exc))
            except EngineError as exc:
                log.error("search failed: %s", exc)
                job.post(Failed(APIError(500, str(exc), type="server_error")))
            except Exception:
                log.exception("search failed")
                job.post(
                    Failed(
                        APIError(
                            500, "The search failed inside the server; its log has the details.", type="server_error"
                        )
                    )
                )
            finally:
                self._current = None
                self._seconds.append(time.monotonic() - t0)

    def _solve(self, job: Job) -> Outcome:
        target = self.engines.target
        prompt_tokens = len(target.tokenize(target.format_chat(SYSTEM_PROMPT, job.question)))
        transcript = Transcript()
        began = False

        def emit(event: Event) -> None:
            nonlocal began
            # SearchStarted comes before the prompt is read; any later event
            # means the prompt fit.
            if not began and not isinstance(event, SearchStarted):
                began = True
                job.post(Began())
            text = transcript.follow(event)
            if text is not None:
                job.post(Reasoning(text))

        try:
            finished = run(
                job.method, job.question, self.engines, job.settings, emit=emit, should_stop=job.cancel.is_set
            )
        except ValueError as exc:  # the search's one-sentence refusals
            raise APIError(400, str(exc), param="messages") from None
        except ContextFullError as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        finally:
            # The reward model keeps prefixes cached for the next step; between
            # requests nothing is next, so an idle server holds no sequences.
            self.engines.reward.reset()
        outcome = transcript.outcome(
            finished,
            method=job.method,
            preset=self.preset,
            settings=job.settings.model_dump(),
            prompt_tokens=prompt_tokens,
        )
        log.info(
            "%s: %d steps in %.1f s, answer %s%s",
            job.method,
            finished.stats.steps,
            finished.stats.wall_seconds,
            finished.answer,
            " (cancelled)" if finished.cancelled else "",
        )
        return outcome
