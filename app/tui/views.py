"""What the app asks of a widget that shows a search: take its events, then draw.

Events arrive in batches (at most `REFRESH_HZ` a second); several events of a
batch often touch the same thing (a candidate streamed, drafted, scored, given
its fate), so a view takes them one by one and draws once per batch.
"""

from __future__ import annotations

from typing import Protocol

from app.search.events import Event


class EventView(Protocol):
    def apply(self, event: Event) -> bool:
        """Take the next event of a run; True when it changed what the view shows."""
        ...

    def flush(self) -> None:
        """Draw what the events applied since the last flush changed.

        Called once after each batch in which `apply` returned True.
        """
        ...
