"""A value-head reward in the search: it reads the target's state at each step's
end, costs no reward-model call, and decides exactly as a reward model giving
the same numbers would."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.search import run
from app.search.events import CandidatesScored, Event, StepAccepted
from app.search.settings import SearchSettings
from engines.testing.scripted import (
    ARITHMETIC_DRAFT,
    ARITHMETIC_QUESTION,
    ARITHMETIC_REWARDS,
    ARITHMETIC_TARGET,
    FakeClock,
    ScriptedEngines,
    ScriptedModel,
    scripted_engines,
)
from engines.value_head import ValueHead, ValueHeadReward

DEFAULT = 0.5


def _state(step: str) -> list[float]:
    # One "hidden" feature: the log-odds of the step's scripted reward, so that a
    # head with weight 1 and bias 0 gives back exactly that reward.
    r = ARITHMETIC_REWARDS.get(step, DEFAULT)
    return [math.log(r / (1 - r))]


def value_head_engines() -> ScriptedEngines:
    clock = FakeClock()
    head = ValueHead(np.array([1.0]), 0.0, np.array([0.0]), np.array([1.0]), "")
    return ScriptedEngines(
        target=ScriptedModel(
            "scripted-target",
            ARITHMETIC_TARGET,
            clock=clock,
            seconds_per_token=0.04,
            seconds_per_prefill_token=0.004,
            states=_state,
        ),
        reward=ValueHeadReward(head, model_name="scripted-target"),
        draft=ScriptedModel("scripted-draft", ARITHMETIC_DRAFT, clock=clock, seconds_per_prefill_token=0.001),
        clock=clock,
    )


def _run(method: str, engines: ScriptedEngines) -> tuple[list[Event], object]:
    events: list[Event] = []
    finished = run(
        method, ARITHMETIC_QUESTION, engines, SearchSettings(seed=2), emit=events.append, clock=engines.clock
    )
    return events, finished


def _decisions(events: list[Event]) -> list[tuple]:
    accepted = [(e.step, e.id, e.origin) for e in events if isinstance(e, StepAccepted)]
    rewards = [(s.id, round(s.reward, 6)) for e in events if isinstance(e, CandidatesScored) for s in e.scores]
    return accepted + rewards


@pytest.mark.parametrize("method", ["specs", "beam", "best-of-n", "rsd", "beam-draft"])
def test_value_head_decides_as_the_same_rewards_would(method: str) -> None:
    engines = value_head_engines()
    events, finished = _run(method, engines)
    reference_events, reference = _run(method, scripted_engines(rewards=ARITHMETIC_REWARDS, default_reward=DEFAULT))
    if method in ("specs", "beam", "best-of-n"):  # every step is read by the target anyway
        assert _decisions(events) == _decisions(reference_events)
    assert finished.answer == reference.answer
    assert engines.live == 0
    # No model call for the reward: one dot product per step.
    assert engines.reward.usage.calls > 0
    assert finished.stats.models["reward"].generated == 0 and finished.stats.models["reward"].prefilled == 0
