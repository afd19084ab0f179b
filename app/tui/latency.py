"""Where the time goes: elapsed, a stacked bar of time per model, rates.

While a search runs the split is estimated from the events (drafting time by
the model that drafted, scoring time as one "score" slice, since target
teacher-forcing and the reward model share it); when it finishes the exact
per-model times from `Stats` replace the estimate.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.timer import Timer
from textual.widget import Widget

from app.render import acceptance, tokens_per_second, used_roles
from app.search.events import (
    CandidatesDrafted,
    CandidatesScored,
    Deferred,
    DraftProgress,
    Event,
    Finished,
    SearchStarted,
    Stats,
    StepAccepted,
)
from app.search.methods import REGISTRY

SLICE_STYLE = {
    "draft": "cyan",
    "target": "magenta",
    "reward": "yellow",
    "score": "yellow",
    "other": "grey50",
    "in flight": "grey50",
}
OUTSIDE_MODELS = ("other", "in flight")
# While text streams, the elapsed time ticks this often, not at every batch.
LATENCY_TICK = 0.5


def stacked_bar(width: int, slices: dict[str, float]) -> Text:
    """Slices in proportion to their seconds; every non-zero slice gets a cell."""
    total = sum(slices.values())
    bar = Text()
    if total <= 0 or width <= 0:
        return Text("░" * max(width, 0), style="dim")
    cells = {k: max(1, round(v / total * width)) for k, v in slices.items() if v > 0}
    # Rounding can miss the width either way; the widest slice absorbs the difference.
    widest = max(cells, key=cells.__getitem__)
    cells[widest] -= sum(cells.values()) - width
    for name, n in cells.items():
        bar.append("█" * max(n, 0), style=SLICE_STYLE.get(name, "white"))
    return bar


class LatencyPanel(Widget):
    DEFAULT_CSS = """
    LatencyPanel { height: 6; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._reset()
        self._decided = False  # an event other than streamed text since the last paint
        self._painted = 0.0
        self._catch_up: Timer | None = None

    def on_mount(self) -> None:
        self.border_title = "Latency"

    def _reset(self) -> None:
        self.started_at: float | None = None
        self.elapsed = 0.0
        self.seconds: dict[str, float] = {}
        self.tokens = 0
        self.accepted = {"draft": 0, "target": 0}
        self.deferrals = 0
        self.stats: Stats | None = None
        self.uses_draft = True

    def apply(self, event: Event) -> bool:
        """Take the next event; always True, since every event moves the elapsed time."""
        self._decided = self._decided or not isinstance(event, DraftProgress)
        if isinstance(event, SearchStarted):
            self._reset()
            self.started_at = event.t
            # Acceptance means something where steps pass between draft and target.
            spec = REGISTRY.get(event.method)
            self.uses_draft = spec is not None and spec.hands_over
            return True
        if self.started_at is not None:
            self.elapsed = max(self.elapsed, event.t - self.started_at)
        if isinstance(event, CandidatesDrafted):
            self.seconds[event.origin] = self.seconds.get(event.origin, 0.0) + event.seconds
            self.tokens += sum(c.n_tokens for c in event.candidates)
        elif isinstance(event, CandidatesScored):
            self.seconds["score"] = self.seconds.get("score", 0.0) + event.seconds
        elif isinstance(event, StepAccepted):
            self.accepted[event.origin] += 1
        elif isinstance(event, Deferred):
            self.deferrals += 1
        elif isinstance(event, Finished):
            self.stats = event.stats
            self.elapsed = event.stats.wall_seconds
            self.uses_draft = "draft" in used_roles(event.stats)
        return True

    def flush(self) -> None:
        """A decision shows at once; the time streamed text takes, every LATENCY_TICK."""
        wait = self._painted + LATENCY_TICK - time.monotonic()
        if self._decided or wait <= 0:
            self._paint()
        elif self._catch_up is None:
            self._catch_up = self.set_timer(wait, self._paint)

    def _paint(self) -> None:
        if self._catch_up is not None:
            self._catch_up.stop()
            self._catch_up = None
        self._decided = False
        self._painted = time.monotonic()
        self.refresh()

    def slices(self) -> dict[str, float]:
        if self.stats is not None:
            out = {r: self.stats.models[r].seconds for r in used_roles(self.stats)}
            rest = "other"  # Python, bookkeeping: outside every model
        else:
            out = {k: self.seconds[k] for k in ("draft", "target", "score") if self.seconds.get(k)}
            rest = "in flight"  # the batch being drafted or scored right now
        remainder = self.elapsed - sum(out.values())
        if remainder >= 0.05:
            out[rest] = remainder
        return out

    def render(self) -> Text:
        width = max(self.size.width, 10)
        if self.stats is not None:
            rate = tokens_per_second(self.stats)
            accept = acceptance(self.stats)
            deferrals = self.stats.deferrals
        else:
            rate = self.tokens / self.elapsed if self.elapsed > 0 else 0.0
            steps = sum(self.accepted.values())
            accept = f"{self.accepted['draft'] / steps if steps else 0:.0%} ({self.accepted['draft']}/{steps})"
            deferrals = self.deferrals
        head = Text.assemble(
            ("elapsed ", "dim"),
            (f"{self.elapsed:.1f} s", "bold"),
            ("   ", ""),
            (f"{rate:.0f}", "bold"),
            (" tok/s", "dim"),
        )
        slices = self.slices()
        # The models on the legend line; the time outside them on the head line.
        legend = Text()
        for name, seconds in slices.items():
            if name in OUTSIDE_MODELS:
                line = head
                line.append("   ")
            else:
                line = legend
            line.append("■ ", style=SLICE_STYLE[name])
            line.append(f"{name} {seconds:.1f}s  ")
        tail = Text()
        if self.uses_draft:
            tail.append("acceptance ", style="dim")
            tail.append(accept, style="bold")
            tail.append("   deferrals ", style="dim")
            tail.append(str(deferrals), style="bold")
        # Lines are cut at the edge (CSS text-wrap): the fixed height never needs a new layout.
        return Text("\n").join([head, stacked_bar(width, slices), legend, tail])
