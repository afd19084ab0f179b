"""The baselines' selection rules on the scripted engine: beam, beam-draft, RSD, best-of-n, greedy."""

from __future__ import annotations

import math

import pytest

from app.search import run
from app.search.answer import normalize
from app.search.events import (
    BeamPruned,
    CandidateCompleted,
    CandidateFates,
    CandidatesDrafted,
    CandidatesScored,
    Deferred,
    Event,
    Finished,
    StepAccepted,
    StepStarted,
)
from app.search.settings import SearchSettings
from engines.testing.scripted import (
    ARITHMETIC_QUESTION,
    ARITHMETIC_REWARDS,
    Continuation,
    ScriptedEngines,
    scripted_engines,
)

PLAN = "We need to add 12 and 30.\n\n"
TENS = "First add the tens: 10 + 30 = 40.\n\n"
ONES = "Then add the ones: 40 + 2 = 42.\n\n"
ANSWER = "The answer is \\boxed{42}."


def solve(
    method: str, settings: SearchSettings | None = None, engines: ScriptedEngines | None = None
) -> tuple[Finished, list[Event], ScriptedEngines]:
    engines = engines or scripted_engines()
    events: list[Event] = []
    settings = settings or SearchSettings()
    finished = run(method, ARITHMETIC_QUESTION, engines, settings, emit=events.append, clock=engines.clock)
    assert engines.live == 0
    return finished, events, engines


def of(events: list[Event], cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def branching_engines() -> ScriptedEngines:
    """Three first steps of different quality, each with two possible endings."""
    firsts = {"Try a.\n\n": 0.9, "Try b.\n\n": 0.6, "Try c.\n\n": 0.3}
    script: dict[str, tuple[Continuation, ...]] = {"": tuple(Continuation(t, math.log(1 / 3)) for t in firsts)}
    rewards = dict(firsts)
    for i, first in enumerate(firsts):
        ends = (f"So \\boxed{{{i}}}.", f"Thus \\boxed{{{i + 10}}}.")
        script[first] = tuple(Continuation(e, math.log(0.5), eos=True) for e in ends)
        rewards.update({ends[0]: 0.5 + i / 10, ends[1]: 0.4})
    return scripted_engines(draft=script, target=script, rewards=rewards)


# -- beam search -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_beam_keeps_the_top_m_live_candidates_by_reward(seed: int) -> None:
    settings = SearchSettings(n=6, beam_width=2, temperature=1.0, seed=seed)
    finished, events, _ = solve("beam", settings, branching_engines())
    pruned = of(events, BeamPruned)
    assert pruned
    for event in pruned:
        rewards = {s.id: s.reward for e in of(events, CandidatesScored) if e.step == event.step for s in e.scores}
        fates = next(e.fates for e in of(events, CandidateFates) if e.step == event.step)
        live = [cid for cid in rewards if fates[cid] != "completed"]
        best = sorted(live, key=lambda cid: -rewards[cid])[:2]
        assert sorted(event.kept) == sorted(best)
        assert set(event.pruned) == set(live) - set(best)
        assert all(fates[cid] == "pruned" for cid in event.pruned)
    # Each kept prefix gets ceil(6 / 2) = 3 continuations.
    step1 = next(e for e in of(events, CandidatesDrafted) if e.step == 1)
    assert len(step1.candidates) == 6 and len({c.parent for c in step1.candidates}) == 2
    best = max(of(events, CandidateCompleted), key=lambda c: c.merit)
    assert finished.answer == best.answer


def test_beam_scores_are_rewards_and_the_target_is_the_policy() -> None:
    finished, events, engines = solve("beam")
    assert {e.origin for e in of(events, StepStarted)} == {"target"}
    for e in of(events, CandidatesScored):
        assert all(s.tilted is None and s.merit == s.reward and s.draft_logprob is None for s in e.scores)
    assert engines.draft is not None and engines.draft.usage.calls == 0
    assert finished.answer == "42" and finished.stats.target_steps == finished.stats.steps


def test_beam_stops_once_n_solutions_completed() -> None:
    for seed in range(6):
        settings = SearchSettings(n=2, beam_width=1, temperature=1.0, seed=seed)
        _, events, _ = solve("beam", settings, branching_engines())
        completed_by_step: dict[int, int] = {}
        for c in of(events, CandidateCompleted):
            completed_by_step[c.step] = completed_by_step.get(c.step, 0) + 1
        last = max(e.step for e in of(events, StepStarted))
        before = sum(n for step, n in completed_by_step.items() if step < last)
        assert before < 2
        fates = next(e.fates for e in of(events, CandidateFates) if e.step == last)
        assert sum(completed_by_step.values()) >= 2 or "accepted" not in fates.values()


def test_beam_draft_uses_only_the_draft() -> None:
    finished, events, engines = solve("beam-draft")
    assert {e.origin for e in of(events, StepStarted)} == {"draft"}
    assert engines.target.usage.calls == 0
    assert finished.stats.models["target"].generated == 0
    assert all(q.policy_seq is None for q in engines.reward.queries)
    # The draft alone cannot do the ones step: beam search on it ends wrong.
    assert finished.answer in {"24", "44"} and finished.stats.draft_steps == finished.stats.steps


def test_beam_draft_needs_a_draft() -> None:
    with pytest.raises(ValueError, match="needs a draft model"):
        solve("beam-draft", engines=scripted_engines(draft=None))


# -- RSD ------------------------------------------------------------------------------


def test_rsd_keeps_draft_steps_at_or_above_delta_and_defers_the_rest() -> None:
    finished, events, engines = solve("rsd", SearchSettings(rsd_delta=0.7))
    for scored in of(events, CandidatesScored):
        (score,) = scored.scores
        deferred = [d for d in of(events, Deferred) if d.step == scored.step]
        if score.reward >= 0.7:
            assert not deferred
        else:
            assert deferred and deferred[0].best == score.reward and deferred[0].threshold.value == 0.7
    # The draft has no right ones step: that one came from the target, unjudged.
    by_origin = {e.text: e for e in of(events, StepAccepted)}
    assert by_origin[ONES].origin == "target" and by_origin[ONES].reward is None
    assert all(q.candidate != ONES for q in engines.reward.queries)
    assert finished.answer == "42" and finished.stats.deferrals == len(of(events, Deferred)) >= 1


def test_rsd_delta_extremes() -> None:
    never, events, _ = solve("rsd", SearchSettings(rsd_delta=0.0))
    assert not of(events, Deferred) and never.stats.target_steps == 0
    always, events, _ = solve("rsd", SearchSettings(rsd_delta=1.0))
    assert always.stats.draft_steps == 0 and always.stats.deferrals == always.stats.steps
    assert always.answer == "42"


def test_rsd_samples_one_draft_per_step() -> None:
    _, events, _ = solve("rsd", SearchSettings(n=8))
    assert all(len(e.candidates) == 1 for e in of(events, CandidatesDrafted))


# -- best-of-n ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_best_of_n_votes_with_the_rewards_of_n_independent_solutions(seed: int) -> None:
    settings = SearchSettings(n=8, temperature=1.0, seed=seed)
    finished, events, _ = solve("best-of-n", settings, branching_engines())
    completed = of(events, CandidateCompleted)
    assert len(completed) == 8 and not of(events, BeamPruned)
    assert len(of(events, CandidatesDrafted)[0].candidates) == 8
    rewards = {s.id: s.reward for e in of(events, CandidatesScored) for s in e.scores}
    weights: dict[str, float] = {}
    for c in completed:
        weights[normalize(c.answer)] = weights.get(normalize(c.answer), 0.0) + rewards[c.id]
    assert finished.answer == max(weights, key=lambda a: weights[a])


def test_best_of_n_keeps_identical_chains_as_votes() -> None:
    _, events, _ = solve("best-of-n", SearchSettings(n=4, temperature=0.0))
    fates = [f for e in of(events, CandidateFates) for f in e.fates.values()]
    assert "duplicate" not in fates
    assert len(of(events, CandidateCompleted)) == 4


# -- greedy -----------------------------------------------------------------------------------


def test_greedy_follows_the_most_likely_step_without_the_reward_model() -> None:
    finished, events, engines = solve("greedy", SearchSettings(temperature=1.5, seed=9))
    assert [e.text for e in of(events, StepAccepted)] == [PLAN, TENS, ONES]
    assert all(e.reward is None for e in of(events, StepAccepted))
    assert engines.reward.usage.calls == 0 and not of(events, CandidatesScored)
    assert finished.solution == PLAN + TENS + ONES + ANSWER and finished.answer == "42"
    assert all(len(e.candidates) == 1 for e in of(events, CandidatesDrafted))


def test_greedy_scores_are_mean_target_logprobs() -> None:
    _, events, engines = solve("greedy")
    plan = of(events, StepAccepted)[0]
    assert plan.merit == plan.logprob == pytest.approx(-0.05 / len(engines.target.tokenize(PLAN)))
    assert ARITHMETIC_REWARDS[PLAN] == 0.9  # judged in the others, not here
