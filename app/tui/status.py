"""The status line: what the app waits for, or where the running search is."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from app.render import one_line
from app.search.events import Event, SearchStarted, StepStarted


class StatusBar(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._method = ""  # of the run whose events come in
        self._line: str | None = None  # said by the last event, not yet shown

    def say(self, text: str) -> None:
        # One line of fixed size: a repaint, never a new layout.
        self.update(Text(text), layout=False)

    def apply(self, event: Event) -> bool:
        if isinstance(event, SearchStarted):
            self._method = event.method
            self._line = f"{event.method}: {one_line(event.question, 60)}"
        elif isinstance(event, StepStarted):
            self._line = f"{self._method} · step {event.step} · {event.origin} drafting…"
        else:
            return False
        return True

    def flush(self) -> None:
        if self._line is not None:
            self.say(self._line)
            self._line = None
