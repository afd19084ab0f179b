"""The hand-over from a search thread to the UI thread.

The search calls `EventBuffer.emit` for every event; it must stay O(1) and never
block on the UI, so it only appends under a lock held for a few instructions
(no syscall, unlike `post_message`, which wakes the event loop every time).
The UI drains the buffer on a timer (at most 10 times a second), which
coalesces the high-rate `DraftProgress` events: a newer snapshot of the same
step's texts replaces the one still waiting.

`play` feeds a recorded trace through the same path at the pace its
timestamps give.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from app.search.events import DraftProgress, Event


class EventBuffer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._result: object | None = None
        self.received = 0  # every event emitted, coalesced or not

    def emit(self, event: Event) -> None:
        with self._lock:
            self.received += 1
            pending = self._pending
            if type(event) is DraftProgress and pending:
                last = pending[-1]
                if type(last) is DraftProgress and last.step == event.step and last.origin == event.origin:
                    pending[-1] = event
                    return
            pending.append(event)

    def only_progress(self) -> bool:
        """Whether everything waiting is streamed text (which can wait a little longer)."""
        with self._lock:
            pending = self._pending
            return bool(pending) and self._result is None and all(type(e) is DraftProgress for e in pending)

    def finish(self, result: object) -> None:
        """The producer is done; `result` comes out of the drain after its last events."""
        with self._lock:
            self._result = result

    def drain(self) -> tuple[list[Event], object | None]:
        """Events since the last drain, and the producer's result once it is done."""
        with self._lock:
            events, self._pending = self._pending, []
            result, self._result = self._result, None
        return events, result


def play(
    events: Iterable[Event],
    speed: float,
    emit: Callable[[Event], None],
    should_stop: Callable[[], bool],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Emit `events` spaced as their timestamps say, `speed` times faster.

    Returns how many were emitted (fewer when stopped).
    """
    if speed <= 0:
        raise ValueError("speed must be positive")
    start_wall = clock()
    start_t: float | None = None
    count = 0
    for event in events:
        if start_t is None:
            start_t = event.t
        due = start_wall + (event.t - start_t) / speed
        # Sleep in short slices so a cancel is seen within a tenth of a second.
        while (wait := due - clock()) > 0:
            if should_stop():
                return count
            sleep(min(wait, 0.1))
        if should_stop():
            return count
        emit(event)
        count += 1
    return count
