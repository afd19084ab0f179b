"""The result box: one run's answer drawn large, or several runs side by side."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical

from app.search.events import Event, Finished, SearchStarted
from app.tui.answer import AnswerPanel
from app.tui.compare import ComparePanel
from app.tui.messages import RunOutcome


class ResultPane(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.answer = AnswerPanel(id="answer")
        self.compare = ComparePanel(id="compare-panel")
        self._method = ""  # of the run whose events come in
        self._unshown: list[RunOutcome] = []

    def compose(self) -> ComposeResult:
        yield self.answer
        yield self.compare

    def on_mount(self) -> None:
        self.border_title = "Answer"
        self.compare.display = False

    def begin(self, hint: str, methods: Sequence[str] = ()) -> None:
        """A job starts: `hint` until its answer comes; a table when it runs several methods."""
        self.answer.clear(hint)
        self.compare.display = len(methods) > 1
        # Side by side, the table holds both answers; one answer is drawn large.
        self.answer.display = not self.compare.display
        self.border_title = "Compare" if self.compare.display else "Answer"
        if self.compare.display:
            self.compare.start(list(methods))

    def apply(self, event: Event) -> bool:
        if isinstance(event, SearchStarted):
            self._method = event.method
        elif isinstance(event, Finished):
            self._unshown.append(RunOutcome(self._method, event))
            return True
        return False

    def flush(self) -> None:
        for outcome in self._unshown:
            finished = outcome.finished
            self.answer.show(finished)
            if self.compare.display:
                self.compare.add(outcome)
            if finished.error:
                self.notify(finished.error, severity="error", title="Search failed", markup=False)
        self._unshown.clear()
