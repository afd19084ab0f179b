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
    scores: list[float] = field(default_factory=list)
    chosen_reward: float | None = None
    chosen_score: float | None = None
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
        self._scored: dict[str, tuple[Origin, float]] = {}  # id -> (origin, reward)

    def apply(self, event: Event) -> bool:
        """Take an event; True when the chart changed."""
        if isinstance(event, SearchStarted):
            self.steps = {}
            self._scored = {}
            self.thresholds = chart_thresholds(event.thresholds)
        elif isinstance(event, CandidatesScored):
            row = self.steps.setdefault(event.step, StepRewards())
            row.rewards += [s.reward for s in event.scores]
            row.scores += [s.score for s in event.scores]
            self._scored.update((s.id, (event.origin, s.reward)) for s in event.scores)
        elif isinstance(event, StepAccepted):
            row = self.steps.setdefault(event.step, StepRewards())
            row.chosen_reward, row.chosen_score, row.origin = event.reward, event.score, event.origin
        elif isinstance(event, CandidateCompleted):
            # A finishing step is chosen by completing, not by a StepAccepted.
            row = self.steps.setdefault(event.step, StepRewards())
            if row.chosen_score is None or event.score > row.chosen_score:
                origin, reward = self._scored.get(event.id, (None, None))
                row.chosen_reward, row.chosen_score, row.origin = reward, event.score, origin
        else:
            return False
        return True

    def _score_range(self) -> tuple[float, float]:
        values = [s for row in self.steps.values() for s in row.scores]
        if self.thresholds.tilted is not None:
            values.append(self.thresholds.tilted)
        if not values:
            return 0.0, 1.0
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.05 or 1.0
        return lo - pad, hi + pad

    def render(self) -> Text:
        width = self.size.width
        show_scores = self.thresholds.tilted is not None and width >= 44
        # "  3 D " + track + " 0.82" [+ "  " + track + " 12.34"]
        fixed = 6 + 5 + (9 if show_scores else 0)
        room = max(width - fixed, 4)
        reward_width = room // 2 if show_scores else room
        score_width = room - reward_width
        t = self.thresholds
        head = Text(" " * 6 + "reward 0–1".ljust(reward_width + 5), style="bold")
        if show_scores:
            head.append("  score", style="bold")
        lines = [head]
        if not self.steps:
            lines.append(Text("no scored steps yet", style="dim"))
        lo, hi = self._score_range()
        for step in sorted(self.steps):
            row = self.steps[step]
            style = ORIGIN_STYLE.get(row.origin or "", "bold white")
            line = Text(f"{step:3d} ", style="dim")
            line.append((row.origin or " ")[0].upper() + " ", style=style)
            line.append_text(track(reward_width, 0.0, 1.0, row.rewards, row.chosen_reward, t.reward, style))
            line.append(f" {row.chosen_reward:4.2f}" if row.chosen_reward is not None else "    ·")
            if show_scores:
                line.append("  ")
                line.append_text(track(score_width, lo, hi, row.scores, row.chosen_score, t.tilted, style))
                line.append(f" {row.chosen_score:6.2f}" if row.chosen_score is not None else "      ·")
            lines.append(line)
        if t.reward is not None:
            lines.append(Text(f"┊ {t.reward_name} {t.reward:.2f} (reward)", style="yellow"))
        if show_scores:
            lines.append(Text(f"┊ {t.tilted_name} {t.tilted:.2f} (tilted score)", style="yellow"))
        lines.append(Text("● chosen  ━ candidates min–max", style="dim"))
        return Text("\n").join(lines)
