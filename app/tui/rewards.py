"""Reward (and tilted score) per step: the chosen candidate against the spread.

One line per step. The reward track runs from 0 to 1 with the run's reward
threshold marked (SPECS's tau_switch, RSD's delta); for a method that tilts
(SPECS) a second track shows the tilted scores with the threshold on them
(tau_accept) marked. The dim bar spans the step's candidates (min to max),
the dot is the one chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget

from app.search.events import (
    CandidateCompleted,
    CandidatesScored,
    Event,
    Origin,
    SearchStarted,
    StepAccepted,
    Threshold,
)

ORIGIN_STYLE = {"draft": "bold cyan", "target": "bold magenta"}


@dataclass
class StepRewards:
    rewards: list[float] = field(default_factory=list)
    tilted: list[float] = field(default_factory=list)
    chosen_reward: float | None = None
    chosen_tilted: float | None = None
    chosen_merit: float | None = None  # what chose among the step's completions
    origin: Origin | None = None


@dataclass(frozen=True)
class Thresholds:
    reward: float | None = None  # on the reward: tau_switch (SPECS) or delta (RSD)
    tilted: float | None = None  # on the tilted score: tau_accept (SPECS)
    reward_name: str = "τ_switch"
    tilted_name: str = "τ_accept"


def chart_thresholds(thresholds: tuple[Threshold, ...]) -> Thresholds:
    """The first threshold on each track, from a run's SearchStarted."""
    on_reward = next((t for t in thresholds if t.bounds == "reward"), None)
    on_tilted = next((t for t in thresholds if t.bounds == "tilted"), None)
    return Thresholds(
        reward=on_reward.value if on_reward else None,
        tilted=on_tilted.value if on_tilted else None,
        reward_name=on_reward.symbol if on_reward else Thresholds.reward_name,
        tilted_name=on_tilted.symbol if on_tilted else Thresholds.tilted_name,
    )


def track(
    width: int,
    lo: float,
    hi: float,
    values: list[float],
    chosen: float | None,
    threshold: float | None,
    chosen_style: str,
) -> Text:
    """A one-line axis from lo to hi: spread bar, threshold tick, chosen dot."""
    cells = ["·"] * width
    styles = ["dim"] * width

    def at(v: float) -> int:
        if hi <= lo:
            return 0
        return min(width - 1, max(0, round((v - lo) / (hi - lo) * (width - 1))))

    if values:
        for i in range(at(min(values)), at(max(values)) + 1):
            cells[i], styles[i] = "━", "grey50"
    if threshold is not None:
        i = at(threshold)
        cells[i], styles[i] = "┊", "yellow"
    if chosen is not None:
        i = at(chosen)
        cells[i], styles[i] = "●", chosen_style
    out = Text()
    for cell, style in zip(cells, styles):
        out.append(cell, style=style)
    return out


class RewardChart(Widget):
    DEFAULT_CSS = """
    RewardChart { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps: dict[int, StepRewards] = {}
        self.thresholds = Thresholds()
        self._origins: dict[str, Origin] = {}  # of the scored candidates, by id

    def apply(self, event: Event) -> bool:
        """Take an event; True when the chart changed."""
        if isinstance(event, SearchStarted):
            self.steps = {}
            self._origins = {}
            self.thresholds = chart_thresholds(event.thresholds)
        elif isinstance(event, CandidatesScored):
            row = self.steps.setdefault(event.step, StepRewards())
            row.rewards += [s.reward for s in event.scores]
            row.tilted += [s.tilted for s in event.scores if s.tilted is not None]
            self._origins.update((s.id, event.origin) for s in event.scores)
        elif isinstance(event, StepAccepted):
            row = self.steps.setdefault(event.step, StepRewards())
            row.chosen_reward, row.chosen_tilted, row.origin = event.reward, event.tilted, event.origin
            row.chosen_merit = event.merit
        elif isinstance(event, CandidateCompleted):
            # A finishing step is chosen by completing, not by a StepAccepted.
            row = self.steps.setdefault(event.step, StepRewards())
            merit = event.merit
            if row.chosen_merit is None or (merit is not None and merit > row.chosen_merit):
                row.chosen_reward, row.chosen_tilted, row.chosen_merit = event.reward, event.tilted, merit
                row.origin = self._origins.get(event.id)
        else:
            return False
        return True

    def _tilted_range(self) -> tuple[float, float]:
        values = [s for row in self.steps.values() for s in row.tilted]
        if self.thresholds.tilted is not None:
            values.append(self.thresholds.tilted)
        if not values:
            return 0.0, 1.0
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.05 or 1.0
        return lo - pad, hi + pad

    def render(self) -> Text:
        width = self.size.width
        show_tilted = self.thresholds.tilted is not None and width >= 44
        # "  3 D " + track + " 0.82" [+ "  " + track + " 12.34"]
        fixed = 6 + 5 + (9 if show_tilted else 0)
        room = max(width - fixed, 4)
        reward_width = room // 2 if show_tilted else room
        tilted_width = room - reward_width
        t = self.thresholds
        head = Text(" " * 6 + "reward 0–1".ljust(reward_width + 5), style="bold")
        if show_tilted:
            head.append("  score", style="bold")
        lines = [head]
        if not self.steps:
            lines.append(Text("no scored steps yet", style="dim"))
        lo, hi = self._tilted_range()
        for step in sorted(self.steps):
            row = self.steps[step]
            style = ORIGIN_STYLE.get(row.origin or "", "bold white")
            line = Text(f"{step:3d} ", style="dim")
            line.append((row.origin or " ")[0].upper() + " ", style=style)
            line.append_text(track(reward_width, 0.0, 1.0, row.rewards, row.chosen_reward, t.reward, style))
            line.append(f" {row.chosen_reward:4.2f}" if row.chosen_reward is not None else "    ·")
            if show_tilted:
                line.append("  ")
                line.append_text(track(tilted_width, lo, hi, row.tilted, row.chosen_tilted, t.tilted, style))
                line.append(f" {row.chosen_tilted:6.2f}" if row.chosen_tilted is not None else "      ·")
            lines.append(line)
        if t.reward is not None:
            lines.append(Text(f"┊ {t.reward_name} {t.reward:.2f} (reward)", style="yellow"))
        if show_tilted:
            lines.append(Text(f"┊ {t.tilted_name} {t.tilted:.2f} (tilted score)", style="yellow"))
        lines.append(Text("● chosen  ━ candidates min–max", style="dim"))
        return Text("\n").join(lines)


class RewardsPane(VerticalScroll):
    """The chart in a scroll box that keeps the newest step in view."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chart = RewardChart(id="rewards")
        self._rows = 0  # the chart's steps at the last flush

    def compose(self) -> ComposeResult:
        yield self.chart

    def on_mount(self) -> None:
        self.border_title = "Rewards"

    def apply(self, event: Event) -> bool:
        return self.chart.apply(event)

    def flush(self) -> None:
        # A new layout only when the chart grew a row; otherwise a repaint.
        grew = len(self.chart.steps) != self._rows
        self._rows = len(self.chart.steps)
        self.chart.refresh(layout=grew)
        if grew:
            self.call_after_refresh(self.scroll_end, animate=False)
