"""The question box: a multi-line TextArea that recalls past questions.

Up on the first line walks back through the history, down on the last line
walks forward, as in a shell; elsewhere the arrows move the cursor.
"""

from __future__ import annotations

from textual.widgets import TextArea

from app.tui.history import History


class QuestionInput(TextArea):
    def __init__(self, history: History, *, blink: bool = True, id: str | None = None) -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            tab_behavior="focus",
            placeholder="Ask a math question, e.g. What is 12 + 30?  (ctrl+s solves, F1 help)",
        )
        self.questions = history
        self.set_reactive(TextArea.cursor_blink, blink)

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0:
            recalled = self.questions.previous()
            if recalled is not None:
                self._show(recalled, at_end=False)
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == self.document.line_count - 1:
            recalled = self.questions.next()
            if recalled is not None:
                self._show(recalled, at_end=True)
            return
        super().action_cursor_down(select)

    def _show(self, text: str, *, at_end: bool) -> None:
        self.load_text(text)
        # Land where the next press continues the walk in the same direction.
        self.move_cursor(self.document.end if at_end else (0, 0))
