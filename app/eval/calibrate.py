"""Choose SPECS's beta and thresholds for a machine and a pair of models.

A sweep runs beam search (the baseline) and SPECS at every point of a grid
of (beta, tau_accept, tau_switch) on the same problems, through the bench
runner. Each setting becomes a point (accuracy, mean latency); the points no
other point beats on both are the Pareto front, and the objective picks one:

- `most-accurate`: the highest accuracy, the fastest among ties;
- `fastest-within:D`: the fastest setting whose accuracy is at most D
  percentage points below beam search's.

Either choice lies on the front: a point that beat it on both counts would
have been chosen instead.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import UserError
from app.eval.runner import Arm

SWEPT = ("beta", "tau_accept", "tau_switch")
BASELINE = "beam"


@dataclass(frozen=True)
class Objective:
    kind: str  # "most-accurate" | "fastest-within"
    points: float = 0.0  # accuracy points below the baseline allowed (fastest-within)

    def describe(self) -> str:
        if self.kind == "most-accurate":
            return "the most accurate setting"
        return f"the fastest setting within {self.points:g} points of {BASELINE} search's accuracy"


def parse_objective(text: str) -> Objective:
    text = text.strip()
    if text == "most-accurate":
        return Objective("most-accurate")
    match = re.fullmatch(r"fastest-within:(\d+(?:\.\d+)?)", text)
    if match:
        return Objective("fastest-within", float(match.group(1)))
    raise UserError(
        f"Unknown --objective {text!r}; use most-accurate or fastest-within:POINTS (e.g. fastest-within:1.0)."
    )


def parse_values(option: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas, e.g. {option} 5,10,20.") from None
    if not values:
        raise UserError(f"{option} is empty; give one or more numbers, e.g. {option} 5,10,20.")
    return list(dict.fromkeys(values))


def grid_arms(betas: Sequence[float], tau_accepts: Sequence[float], tau_switches: Sequence[float]) -> list[Arm]:
    """The baseline, then SPECS at every grid point, labelled by its settings."""
    arms = [Arm(BASELINE, BASELINE)]
    for beta, tau_accept, tau_switch in itertools.product(betas, tau_accepts, tau_switches):
        overrides = {"beta": beta, "tau_accept": tau_accept, "tau_switch": tau_switch}
        arms.append(Arm(arm_label(overrides), "specs", overrides))
    return arms


def arm_label(overrides: dict[str, float]) -> str:
    return "specs[" + ",".join(f"{k}={overrides[k]:g}" for k in SWEPT) + "]"


@dataclass(frozen=True)
class Point:
    label: str
    settings: dict[str, float]  # the swept values; {} for the baseline
    accuracy: float  # 0..1
    latency: float  # mean seconds per problem
    n: int


def points_from_summary(summary: dict[str, Any], arms: Sequence[Arm]) -> tuple[Point | None, list[Point]]:
    """(baseline, SPECS points) from a bench summary of these arms."""
    made: dict[str, Point] = {}
    for arm in arms:
        m = summary["methods"].get(arm.label)
        if m is None or m["latency"]["mean"] is None:
            continue
        made[arm.label] = Point(arm.label, dict(arm.overrides), m["accuracy"], m["latency"]["mean"], m["n"])
    baseline = made.pop(BASELINE, None)
    return baseline, list(made.values())


def dominates(a: Point, b: Point) -> bool:
    return a.accuracy >= b.accuracy and a.latency <= b.latency and (a.accuracy > b.accuracy or a.latency < b.latency)


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and latency, fastest first."""
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.latency, -p.accuracy))


def choose(points: Sequence[Point], objective: Objective, baseline: Point | None) -> Point:
    if not points:
        raise UserError("No SPECS setting finished a problem; run the sweep on more problems or check the preset.")
    if objective.kind == "most-accurate":
        return min(points, key=lambda p: (-p.accuracy, p.latency))
    if baseline is None:
        raise UserError(
            f"fastest-within needs {BASELINE} search's accuracy and it finished no problem; use most-accurate."
        )
    # A small tolerance so that "within 1 point" includes exactly 1 point on small slices.
    floor = baseline.accuracy - objective.points / 100 - 1e-9
    eligible = [p for p in points if p.accuracy >= floor]
    if not eligible:
        best = max(p.accuracy for p in points)
        raise UserError(
            f"No setting is within {objective.points:g} points of {BASELINE} search's {baseline.accuracy:.1%} "
            f"(the best reached {best:.1%}); allow more points or sweep other values."
        )
    return min(eligible, key=lambda p: (p.latency, -p.accuracy))


def table(points: Sequence[Point], baseline: Point | None, chosen: Point | None) -> str:
    """Plain-text table of every setting, marking the front and the choice."""
    front = {p.label for p in pareto_front(points)}
    rows = [("", "setting", "accuracy", "mean s", f"x {BASELINE}", "front")]
    ordered = sorted(points, key=lambda p: (p.latency, -p.accuracy))
    for p in ([baseline] if baseline else []) + ordered:
        ratio = f"{p.latency / baseline.latency:.2f}" if baseline and baseline.latency > 0 else "-"
        rows.append(
            (
                "*" if chosen is not None and p.label == chosen.label else "",
                p.label,
                f"{p.accuracy:.1%}",
                f"{p.latency:.2f}",
                ratio,
                "yes" if p.label in front else ("baseline" if p is baseline else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
