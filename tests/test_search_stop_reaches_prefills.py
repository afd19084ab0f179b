"""A search hands its `should_stop` to every call that may decode a long input:
the prompt's prefill, a lagging model's catch-up and the forced answer's read
of a draft-only solution (scripted engines)."""

from __future__ import annotations

from typing import Any

import pytest

from app.search import run
from app.search.settings import SearchSettings
from engines.testing.scripted import ARITHMETIC_QUESTION, Continuation, ScriptedModel, scripted_engines


def never() -> bool:
    return False


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    """(model, method, should_stop) of every start and extend."""
    seen: list[tuple[str, str, Any]] = []
    for name in ("start", "extend"):
        original = getattr(ScriptedModel, name)

        def spy(self: ScriptedModel, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            seen.append((self.name, _name, kwargs.get("should_stop")))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ScriptedModel, name, spy)
    return seen


def test_the_prompts_and_the_catch_ups_of_a_specs_search_can_stop(calls: list[tuple[str, str, Any]]) -> None:
    engines = scripted_engines()  # the target's first step makes the draft catch up
    finished = run("specs", ARITHMETIC_QUESTION, engines, SearchSettings(), should_stop=never, clock=engines.clock)
    assert finished.answer == "42"
    assert {(model, method) for model, method, _ in calls} >= {
        ("scripted-target", "start"),
        ("scripted-draft", "start"),
        ("scripted-draft", "extend"),
    }
    assert all(stop is never for _, _, stop in calls)


def test_the_forced_answer_reads_a_draft_only_solution_under_should_stop(calls: list[tuple[str, str, Any]]) -> None:
    plan, end = "Add 12 and 30.\n\n", "So, 12 + 30 equals 42."
    unboxed = {
        "": (Continuation(plan, -0.1),),
        plan: (Continuation(end, -0.1, eos=True),),
        "The final answer is $\\boxed{": (Continuation("42}$.", -0.1),),
    }
    engines = scripted_engines(draft=unboxed, target=unboxed, rewards={}, default_reward=0.9)
    settings = SearchSettings(n=2, seed=0, tau_accept=-100)
    finished = run("rsd", "What is 12 + 30?", engines, settings, should_stop=never, clock=engines.clock)
    assert finished.stats.answer_forced
    target_calls = [(method, stop) for model, method, stop in calls if model == "scripted-target"]
    assert target_calls.count(("start", never)) == 2  # the search's prompt, then the solution's
    assert ("extend", never) in target_calls  # the solution (the answer's cue after it is a few tokens)


def test_a_search_stopped_during_its_prompt_ends_cancelled_with_nothing_held() -> None:
    engines = scripted_engines()
    finished = run(
        "specs", ARITHMETIC_QUESTION, engines, SearchSettings(), should_stop=lambda: True, clock=engines.clock
    )
    assert finished.cancelled and finished.solution == ""
    assert engines.target.usage.prefilled == 0
    assert engines.live == 0
