"""A finished solution without a box gets one from the target, for every method."""

from __future__ import annotations

import pytest

from app.search import run
from app.search.events import Event, Finished
from app.search.forced import ANSWER_CUE
from app.search.methods import REGISTRY
from app.search.settings import SearchSettings
from engines.testing.scripted import Continuation, scripted_engines

_PLAN = "Add 12 and 30.\n\n"
_END = "So, 12 + 30 equals 42."
UNBOXED = {
    "": (Continuation(_PLAN, -0.1),),
    _PLAN: (Continuation(_END, -0.1, eos=True),),
    "The final answer is $\\boxed{": (Continuation("42}$.", -0.1),),
}
BOXED = {
    "": (Continuation(_PLAN, -0.1),),
    _PLAN: (Continuation("So the answer is \\boxed{42}.", -0.1, eos=True),),
}


def _solve(method: str, *, target=UNBOXED, draft=UNBOXED, **settings) -> tuple[Finished, list[Event], object]:
    engines = scripted_engines(draft=draft, target=target, rewards={}, default_reward=0.9)
    events: list[Event] = []
    finished = run(
        method,
        "What is 12 + 30?",
        engines,
        SearchSettings(n=2, seed=0, tau_accept=-100, **settings),
        emit=events.append,
        clock=engines.clock,
    )
    return finished, events, engines


@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_gets_its_box_from_the_target(method: str) -> None:
    finished, _, engines = _solve(method)
    assert finished.answer == "42"
    assert finished.stats.answer_forced
    assert finished.solution.endswith(_END + ANSWER_CUE + "42}$.")
    assert finished.stats.to_json()["answer_forced"] is True
    assert engines.live == 0
    # The target's time includes the forced continuation.
    assert finished.stats.models["target"].generated > 0


def test_a_boxed_solution_is_left_alone() -> None:
    finished, _, engines = _solve("specs", target=BOXED, draft=BOXED)
    assert finished.answer == "42" and not finished.stats.answer_forced
    assert ANSWER_CUE not in finished.solution
    assert engines.live == 0


def test_a_cancelled_search_is_not_completed_by_force() -> None:
    engines = scripted_engines(draft=UNBOXED, target=UNBOXED, rewards={}, default_reward=0.9)
    calls = iter(range(1000))
    finished = run(
        "greedy",
        "What is 12 + 30?",
        engines,
        SearchSettings(seed=0),
        should_stop=lambda: next(calls) > 3,
        clock=engines.clock,
    )
    assert finished.cancelled and not finished.stats.answer_forced
    assert engines.live == 0


def test_no_box_from_the_target_either_keeps_the_solution() -> None:
    target = {k: v for k, v in UNBOXED.items() if "boxed" not in k}
    finished, _, engines = _solve("greedy", target=target)
    assert finished.answer is None and not finished.stats.answer_forced
    assert finished.solution.endswith(_END)
    assert engines.live == 0
