"""The method registry: what each search method is, needs and shows.

`run`, the settings, the CLI's and the app's method choices, the app's
panels and the benchmark's checks all read this table, and the thresholds a
run decides by travel in its `SearchStarted` event, so no reader branches on
a method's name. A new method is a module with a `search(ctx)` function and
one entry in REGISTRY.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from app.search import beam, best_of_n, greedy, rsd, specs
from app.search.context import SearchContext
from app.search.events import Bound, Threshold


@dataclass(frozen=True)
class ThresholdSpec:
    """A setting a method compares a number with."""

    setting: str  # the SearchSettings field
    symbol: str  # how readers write it
    bounds: Bound  # the number it is compared with
    help: str  # for the command line

    def at(self, value: float) -> Threshold:
        return Threshold(name=self.setting, symbol=self.symbol, value=float(value), bounds=self.bounds)


TAU_ACCEPT = ThresholdSpec("tau_accept", "τ_accept", "tilted", "SPECS accepts drafts whose tilted score is above this.")
TAU_SWITCH = ThresholdSpec(
    "tau_switch", "τ_switch", "reward", "SPECS returns to the draft after a target step with a reward above this."
)
RSD_DELTA = ThresholdSpec("rsd_delta", "δ", "reward", "RSD keeps a draft step with a reward of at least this.")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    search: Callable[[SearchContext], None]
    description: str  # one line
    needs_draft: bool = False
    # "best": the completed solution with the highest merit, unless
    # settings.answer_selection asks for a vote; "vote": always a
    # reward-weighted vote over the completed solutions' answers.
    selection: Literal["best", "vote"] = "best"
    # Steps pass between the draft and the target, so acceptance and
    # deferrals mean something (the app's latency panel shows them).
    hands_over: bool = False
    thresholds: tuple[ThresholdSpec, ...] = ()

    def thresholds_in(self, settings: Mapping[str, object]) -> tuple[Threshold, ...]:
        """The method's thresholds at their values in `settings` (a SearchSettings dump)."""
        found = []
        for spec in self.thresholds:
            value = settings.get(spec.setting)
            if isinstance(value, (int, float)):
                found.append(spec.at(value))
        return tuple(found)


REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "specs",
            specs.search,
            "SPECS: the draft proposes each step, the target and the reward model verify it, hard steps go to the target.",
            needs_draft=True,
            hands_over=True,
            thresholds=(TAU_ACCEPT, TAU_SWITCH),
        ),
        MethodSpec("beam", beam.search_target, "Beam search with the target model, ranked by the reward model."),
        MethodSpec(
            "beam-draft",
            beam.search_draft,
            "Beam search with the draft model, ranked by the reward model.",
            needs_draft=True,
        ),
        MethodSpec(
            "rsd",
            rsd.search,
            "Reward-guided speculative decoding: one draft step, rewritten by the target when its reward is low.",
            needs_draft=True,
            hands_over=True,
            thresholds=(RSD_DELTA,),
        ),
        MethodSpec(
            "best-of-n",
            best_of_n.search,
            "n independent solutions from the target and a reward-weighted vote over their answers.",
            selection="vote",
        ),
        MethodSpec("greedy", greedy.search, "One solution from the target at temperature 0, without the reward model."),
    )
}
# Every threshold of every method, by setting (old traces name them).
THRESHOLDS: dict[str, ThresholdSpec] = {t.setting: t for spec in REGISTRY.values() for t in spec.thresholds}


def method_spec(name: str) -> MethodSpec:
    """The registry entry of `name`; ValueError with the choices when there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(REGISTRY)}.") from None


def needs_draft(name: str) -> bool:
    """Whether the method `name` runs the draft model (False for a name it does not know)."""
    spec = REGISTRY.get(name)
    return spec is not None and spec.needs_draft


def draftless_methods() -> str:
    """The methods that run without a draft model, for a sentence: "beam, best-of-n or greedy"."""
    names = [name for name, spec in REGISTRY.items() if not spec.needs_draft]
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)
