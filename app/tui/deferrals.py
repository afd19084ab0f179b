"""The log of hand-overs: steps deferred to the target and returns to the draft."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from app.search.events import Deferred, Event, SearchStarted, SwitchedToDraft


def deferral_line(event: Deferred | SwitchedToDraft, method: str = "specs") -> Text:
    line = Text(f"{event.step:>3} ", style="dim")
    if isinstance(event, Deferred):
        # SPECS defers on the tilted score, RSD on the reward.
        value, bound = ("reward", "δ") if method == "rsd" else ("score", "τ_accept")
        line.append("→ target  ", style="bold magenta")
        line.append(f"best {value} {event.best_score:.2f} < {bound} {event.threshold:.2f}")
    else:
        line.append("→ draft   ", style="bold cyan")
        line.append(f"reward {event.reward:.2f} ≥ τ_switch {event.threshold:.2f}")
    return line


class DeferralLog(RichLog):
    """Rare events, so a RichLog with colour is cheap enough; `entries` keeps the plain text."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=500, min_width=20, wrap=True, markup=False, auto_scroll=True)
        self.entries: list[str] = []
        self.method = "specs"

    def apply(self, event: Event) -> None:
        if isinstance(event, SearchStarted):
            self.clear()
            self.entries.clear()
            self.method = event.method
        elif isinstance(event, (Deferred, SwitchedToDraft)):
            line = deferral_line(event, self.method)
            self.entries.append(line.plain)
            self.write(line)
