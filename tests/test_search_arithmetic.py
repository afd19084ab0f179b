"""The arithmetic check: the target's probability of the results a step writes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from app.render import deferral_reason
from app.search import run
from app.search.arithmetic import (
    checked_reward,
    result_probability,
    result_spans,
    results_with_probability,
    token_offsets,
)
from app.search.events import CandidatesScored, Deferred, Event, Finished, StepAccepted
from app.search.settings import SearchSettings
from engines.testing.scripted import (
    ARITHMETIC_DRAFT,
    ARITHMETIC_QUESTION,
    ARITHMETIC_REWARDS,
    ARITHMETIC_TARGET,
    VOCABULARY,
    Continuation,
    FakeClock,
    ScriptedEngines,
    ScriptedModel,
    ScriptedReward,
)

PLAN = "We need to add 12 and 30.\n\n"
TENS = "First add the tens: 10 + 30 = 40.\n\n"
TENS_WRONG = "First add the tens: 10 + 30 = 50.\n\n"
DOUBT = math.log(0.01)


def results(text: str) -> list[str]:
    return [text[a:b] for a, b in result_spans(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 + 30 = 40.\n\n", ["40"]),
        ("Total = 160 + 80 + 20 = 360", ["360"]),  # 160 starts an expression
        ("\\[ 4 \\times 20 = 80 \\]", ["80"]),
        ("cost = $1,250.50 in all", ["1,250.50"]),
        ("cost = \\$12", ["12"]),
        ("x = -7, y = 3.5", ["-7", "3.5"]),
        ("a = 2 \\times 3 = 6", ["6"]),
        ("a = 2(3) = 6", ["6"]),
        ("so 12 = 12 and 5 = 5", ["12", "5"]),
        ("\\frac{1}{2} = \\frac{2}{4}", []),
        ("No equation here: 42.", []),
        ("a = b", []),
        ("p = 0.5^2 = 0.25", ["0.25"]),
    ],
)
def test_result_spans_find_whole_right_hand_sides(text: str, expected: list[str]) -> None:
    assert results(text) == expected


def pieces_tokenizer(pieces: Sequence[str]):
    """Token i is pieces[i]: offsets are easy to check by hand."""
    return list(range(len(pieces))), lambda tokens: "".join(pieces[t] for t in tokens)


def test_token_offsets_place_each_token_and_tolerate_a_cut_last_token() -> None:
    tokens, detok = pieces_tokenizer(["a", " =", " 4", "2", ".\n\n"])
    assert token_offsets(tokens, detok, "a = 42.\n\n") == [0, 1, 3, 5, 6]
    assert token_offsets(tokens, detok, "a = 42.") == [0, 1, 3, 5, 6]
    assert token_offsets(tokens, detok, "a = 43.") is None


def test_result_probability_is_the_product_over_the_least_likely_results_tokens() -> None:
    tokens, detok = pieces_tokenizer(["x", " =", " 4", "2", ", y", " =", " 7", "\n\n"])
    text = "x = 42, y = 7\n\n"
    logprobs = [-3.0, -0.1, -0.2, -0.3, -0.1, -0.1, -1.5, -9.0]
    # 42 is " 4" + "2": exp(-0.5); 7 is " 7": exp(-1.5), the lower of the two.
    assert result_probability(text, tokens, logprobs, detok) == pytest.approx(math.exp(-1.5))
    found = results_with_probability(text, tokens, logprobs, detok)
    assert [(text[a:b], p) for (a, b), p in found] == [
        ("42", pytest.approx(math.exp(-0.5))),
        ("7", pytest.approx(math.exp(-1.5))),
    ]
    assert result_probability("no result\n\n", [0], [-1.0], lambda t: "no result\n\n") is None
    assert result_probability(text, tokens, logprobs[:-1], detok) is None


def test_checked_reward_scales_only_below_the_threshold() -> None:
    assert checked_reward(0.8, 0.01, 0.0) == 0.8  # off
    assert checked_reward(0.8, None, 0.2) == 0.8  # no result in the step
    assert checked_reward(0.8, 0.5, 0.2) == 0.8
    assert checked_reward(0.8, 0.05, 0.2) == pytest.approx(0.2)


class DoubtingTarget(ScriptedModel):
    """A target that follows its script but doubts the token "50." (the wrong
    tens result) wherever it reads or writes it, as a real model doubts a slip."""

    def _doubt(self, tokens: Sequence[int], logprobs: list[float]) -> list[float]:
        return [DOUBT if self.detokenize([t]) == "50." else lp for t, lp in zip(tokens, logprobs)]

    def score(self, pairs, **kwargs):
        scored = super().score(pairs, **kwargs)
        for (_, tokens), result in zip(pairs, scored):
            result.logprobs = self._doubt(tokens, result.logprobs)
        return scored

    def sample(self, seqs, k, params, **kwargs):
        groups = super().sample(seqs, k, params, **kwargs)
        for group in groups:
            for draft in group:
                draft.logprobs = self._doubt(draft.tokens, draft.logprobs)
        return groups


def fooled_engines() -> ScriptedEngines:
    """The draft only proposes the wrong tens step, the target knows it as well
    as the right one, and the judge rates it like the right one."""
    clock = FakeClock()
    draft = {**ARITHMETIC_DRAFT, PLAN: (ARITHMETIC_DRAFT[PLAN][1],)}
    target = {**ARITHMETIC_TARGET, PLAN: (ARITHMETIC_TARGET[PLAN][0], Continuation(TENS_WRONG, -0.3))}
    rewards = {**ARITHMETIC_REWARDS, TENS_WRONG: ARITHMETIC_REWARDS[TENS]}
    return ScriptedEngines(
        target=DoubtingTarget("doubting-target", target, clock=clock, seconds_per_token=0.04),
        reward=ScriptedReward("fooled-judge", rewards, clock=clock),
        draft=ScriptedModel("slipping-draft", draft, clock=clock),
        clock=clock,
    )


def solve(method: str, result_check: float, seed: int = 0) -> tuple[Finished, list[Event]]:
    engines = fooled_engines()
    events: list[Event] = []
    settings = SearchSettings(result_check=result_check, seed=seed, temperature=0.0)
    finished = run(method, ARITHMETIC_QUESTION, engines, settings, emit=events.append, clock=engines.clock)
    return finished, events


def accepted(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, StepAccepted)]


def test_without_the_check_a_fooled_judge_lets_the_wrong_draft_through() -> None:
    finished, events = solve("specs", 0.0)
    assert TENS_WRONG in accepted(events)
    assert finished.answer == "52"
    scores = [s for e in events if isinstance(e, CandidatesScored) for s in e.scores]
    assert all(s.result_prob is None for s in scores)


def test_the_check_defers_the_step_the_target_doubts_and_the_target_writes_it() -> None:
    finished, events = solve("specs", 0.2)
    assert TENS_WRONG not in accepted(events)
    assert TENS in accepted(events)
    assert finished.answer == "42"
    step = next(e for e in events if isinstance(e, CandidatesScored) and e.origin == "draft" and e.step == 1)
    (score,) = step.scores
    assert score.result_prob == pytest.approx(0.01)
    assert score.reward == pytest.approx(ARITHMETIC_REWARDS[TENS] * 0.01 / 0.2)
    deferral = next(e for e in events if isinstance(e, Deferred))
    assert deferral.step == 1
    assert deferral_reason(deferral).endswith("the target doubted a result in 1 of 1 (p = 0.01)")


def test_target_steps_are_checked_with_the_logprobs_they_were_sampled_with() -> None:
    _, events = solve("beam", 0.2)
    tens = [s for e in events if isinstance(e, CandidatesScored) and e.step == 1 for s in e.scores]
    assert tens, "beam search scored the tens step"
    for s in tens:
        # The right tens result: the script's share of the step's logprob per token.
        per_token = ARITHMETIC_TARGET[PLAN][0].logprob / len(VOCABULARY.encode(TENS))
        assert s.result_prob == pytest.approx(math.exp(per_token))
        assert s.reward == pytest.approx(ARITHMETIC_REWARDS[TENS])


# -- the equation check (app/search/equations.py) --------------------------------------


def solve_checking_equations(method: str, temperature: float = 0.0) -> tuple[Finished, list[Event]]:
    engines = fooled_engines()
    events: list[Event] = []
    settings = SearchSettings(equation_check=True, seed=0, temperature=temperature)
    finished = run(method, ARITHMETIC_QUESTION, engines, settings, emit=events.append, clock=engines.clock)
    return finished, events


def test_the_equation_check_defers_a_false_draft_step_without_the_targets_doubt() -> None:
    finished, events = solve_checking_equations("specs")
    assert TENS_WRONG not in accepted(events)
    assert TENS in accepted(events)
    assert finished.answer == "42"
    step = next(e for e in events if isinstance(e, CandidatesScored) and e.origin == "draft" and e.step == 1)
    (score,) = step.scores
    assert score.reward == 0.0
    assert score.result_prob is None  # the target's check is off: the equation alone decided
    assert score.false_equation == "10 + 30 = 50 (it is 40)"
    deferral = next(e for e in events if isinstance(e, Deferred))
    assert (deferral.false_equations, deferral.drafts) == (1, 1)
    assert deferral_reason(deferral).endswith("1 of 1 wrote a false equation: 10 + 30 = 50 (it is 40)")


def test_beam_search_ranks_a_false_equation_last() -> None:
    # At temperature 1 the target writes both tens steps (seed 0).
    finished, events = solve_checking_equations("beam", temperature=1.0)
    tens = {
        s.false_equation: s.reward for e in events if isinstance(e, CandidatesScored) and e.step == 1 for s in e.scores
    }
    assert tens["10 + 30 = 50 (it is 40)"] == 0.0
    assert tens[None] == pytest.approx(ARITHMETIC_REWARDS[TENS])
    assert TENS in accepted(events)
    assert finished.answer == "42"
