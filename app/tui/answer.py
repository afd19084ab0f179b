"""The final answer, drawn large, with the stats line `solve` prints."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Digits, Static

from app.render import is_number, stats_footer, unboxed_answer
from app.search.events import Finished


class AnswerPanel(Vertical):
    DEFAULT_CSS = """
    AnswerPanel { height: auto; }
    AnswerPanel Digits { width: auto; }
    AnswerPanel #answer-text { text-style: bold; width: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.answer: str | None = None

    def compose(self) -> ComposeResult:
        yield Digits("", id="answer-digits")
        yield Static("", id="answer-text")
        yield Static("", id="answer-stats")

    def on_mount(self) -> None:
        self.clear()

    def clear(self, hint: str = "") -> None:
        self.answer = None
        self.query_one("#answer-digits", Digits).display = False
        self.query_one("#answer-text", Static).update(Text(hint))
        self.query_one("#answer-text", Static).display = bool(hint)
        self.query_one("#answer-stats", Static).update("")

    def show(self, finished: Finished) -> None:
        digits = self.query_one("#answer-digits", Digits)
        text = self.query_one("#answer-text", Static)
        self.answer = finished.answer
        if finished.error:
            headline = f"Search failed: {finished.error}"
        elif finished.answer is None:
            headline = unboxed_answer(finished.solution) + (" (cancelled)" if finished.cancelled else "")
        else:
            headline = finished.answer
        # A number is drawn large; anything else (or a failure) as a line of text.
        answer = finished.answer
        number = answer.strip() if answer is not None and not finished.error and is_number(answer) else None
        digits.display = number is not None
        text.display = number is None
        if number is not None:
            digits.update(number)
        else:
            text.update(Text(headline))
        footer = stats_footer(finished.stats)
        self.query_one("#answer-stats", Static).update(Text(("cancelled · " if finished.cancelled else "") + footer))
