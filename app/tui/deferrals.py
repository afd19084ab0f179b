"""The log of hand-overs: steps deferred to the target and returns to the draft."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from app.search.events import Deferred, Event, SearchStarted, SwitchedToDraft

# How the log names the number a threshold bounds.
BOUND_WORDS = {"tilted": "score", "reward": "reward"}


def deferral_line(event: Deferred | SwitchedToDraft) -> Text:
    line = Text(f"{event.step:>3} ", style="dim")
    t = event.threshold
    if isinstance(event, Deferred):
        line.append("→ target  ", style="bold magenta")
        line.append(f"best {BOUND_WORDS[t.bounds]} {event.best:.2f} < {t.symbol} {t.value:.2f}")
    else:
        line.append("→ draft   ", style="bold cyan")
        line.append(f"reward {event.reward:.2f} ≥ {t.symbol} {t.value:.2f}")
    return line


class DeferralLog(RichLog):
    """Rare events, so a RichLog with colour is cheap enough; `entries` keeps the plain text."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=500, min_width=20, wrap=True, markup=False, auto_scroll=True)
        self.entries: list[str] = []
        self._cleared = False  # a new run began since the last flush
        self._unwritten: list[Text] = []

    def on_mount(self) -> None:
        self.border_title = "Deferrals and switches"

    def apply(self, event: Event) -> bool:
        if isinstance(event, SearchStarted):
            self.entries.clear()
            self._unwritten.clear()
            self._cleared = True
        elif isinstance(event, (Deferred, SwitchedToDraft)):
            line = deferral_line(event)
            self.entries.append(line.plain)
            self._unwritten.append(line)
        else:
            return False
        return True

    def flush(self) -> None:
        if self._cleared:
            self.clear()
            self._cleared = False
        for line in self._unwritten:
            self.write(line)
        self._unwritten.clear()
