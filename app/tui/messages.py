"""Messages that carry search events and run outcomes to the UI thread."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from app.search.events import Event, Finished


class SearchEvents(Message):
    """A batch of search events, drained from the buffer by the UI timer."""

    def __init__(self, events: tuple[Event, ...]) -> None:
        super().__init__()
        self.events = events


@dataclass
class RunOutcome:
    """How one method's run ended, for the compare panel."""

    method: str
    finished: Finished


class SearchEnded(Message):
    """The search thread has returned: engines are free for the next question.

    Posted by the thread itself (not inferred from the worker state), because a
    cancelled thread worker keeps running until the search sees `should_stop`.
    """

    def __init__(self, job: int, outcomes: list[RunOutcome], error: str | None) -> None:
        super().__init__()
        self.job = job
        self.outcomes = outcomes
        self.error = error


class StatusChanged(Message):
    """A line for the status bar from the search thread (loading models, ...)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusChanged)
