"""SPECS on the scripted engine: scores, acceptance, deferral, switching, beams."""

from __future__ import annotations

import math
import random
from collections import Counter
from itertools import permutations

import pytest

from app.search import run
from app.search.events import (
    CandidateCompleted,
    CandidateFates,
    CandidatesDrafted,
    CandidatesScored,
    Deferred,
    Event,
    Finished,
    StepAccepted,
    StepStarted,
    SwitchedToDraft,
)
from app.search.settings import SearchSettings
from app.search.specs import softmax_choice
from engines.base import SYSTEM_PROMPT
from engines.testing.scripted import (
    ARITHMETIC_QUESTION,
    ARITHMETIC_REWARDS,
    VOCABULARY,
    Continuation,
    ScriptedEngines,
    scripted_engines,
)

CHI2_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}
PLAN = "We need to add 12 and 30.\n\n"
TENS = "First add the tens: 10 + 30 = 40.\n\n"
ONES = "Then add the ones: 40 + 2 = 42.\n\n"


def solve(
    settings: SearchSettings | None = None, engines: ScriptedEngines | None = None, question: str = ARITHMETIC_QUESTION
) -> tuple[Finished, list[Event], ScriptedEngines]:
    engines = engines or scripted_engines()
    events: list[Event] = []
    finished = run("specs", question, engines, settings or SearchSettings(), emit=events.append, clock=engines.clock)
    return finished, events, engines


def of(events: list[Event], cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def chi_square(observed: Counter, expected: dict) -> float:
    return sum((observed[key] - e) ** 2 / e for key, e in expected.items())


def phases(events: list[Event]) -> list[tuple]:
    """The decisions of a run, in order, without the detail events."""
    out: list[tuple] = []
    for e in events:
        if isinstance(e, StepStarted):
            out.append(("start", e.step, e.origin))
        elif isinstance(e, StepAccepted):
            out.append(("accept", e.step, e.origin))
        elif isinstance(e, Deferred):
            out.append(("defer", e.step))
        elif isinstance(e, SwitchedToDraft):
            out.append(("switch", e.step))
        elif isinstance(e, CandidateCompleted):
            out.append(("complete", e.step))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_arithmetic_run_accepts_defers_switches_and_completes(seed: int) -> None:
    finished, events, engines = solve(SearchSettings(seed=seed))
    assert phases(events)[:11] == [
        ("start", 0, "target"),
        ("accept", 0, "target"),
        ("switch", 0),
        ("start", 1, "draft"),
        ("accept", 1, "draft"),
        ("start", 2, "draft"),
        ("defer", 2),
        ("start", 2, "target"),
        ("accept", 2, "target"),
        ("switch", 2),
        ("start", 3, "draft"),
    ]
    assert set(phases(events)[11:]) == {("complete", 3)}
    assert finished.answer == "42"
    assert finished.solution.startswith(PLAN + TENS + ONES)
    stats = finished.stats
    assert (stats.steps, stats.draft_steps, stats.target_steps) == (4, 2, 2)
    assert (stats.deferrals, stats.switches) == (1, 2)
    assert stats.drafts_proposed == 3 * 4
    assert stats.completed == len(of(events, CandidateCompleted))
    assert engines.live == 0


def test_tilted_score_is_the_log_ratio_plus_beta_reward() -> None:
    _, events, _ = solve(SearchSettings(beta=10.0))
    scored = {s.id: s for e in of(events, CandidatesScored) if e.step == 1 for s in e.scores}
    drafted = {c.id: c for e in of(events, CandidatesDrafted) if e.step == 1 for c in e.candidates}
    tens = next(s for cid, s in scored.items() if drafted[cid].text == TENS)
    n_tokens = len(VOCABULARY.encode(TENS))
    # Script: the draft gives TENS logprob -0.3 in all, the target -0.1.
    assert tens.draft_logprob == pytest.approx(-0.3 / n_tokens)
    assert tens.target_logprob == pytest.approx(-0.1 / n_tokens)
    assert tens.reward == ARITHMETIC_REWARDS[TENS]
    assert tens.tilted == pytest.approx(0.2 / n_tokens + 10 * 0.85)


def test_sum_normalisation_sums_the_step_logprobs() -> None:
    _, events, _ = solve(SearchSettings(logprob_norm="sum", beta=2.0, tau_accept=1.0))
    scored = {s.id: s for e in of(events, CandidatesScored) if e.step == 1 for s in e.scores}
    drafted = {c.id: c for e in of(events, CandidatesDrafted) if e.step == 1 for c in e.candidates}
    tens = next(s for cid, s in scored.items() if drafted[cid].text == TENS)
    assert (tens.draft_logprob, tens.target_logprob) == (pytest.approx(-0.3), pytest.approx(-0.1))
    assert tens.tilted == pytest.approx(0.2 + 2 * 0.85)


def test_target_candidates_score_beta_times_reward() -> None:
    _, events, _ = solve(SearchSettings(beta=3.0, tau_accept=2.0))
    first = next(e for e in of(events, CandidatesScored) if e.origin == "target")
    assert all(s.tilted == pytest.approx(3.0 * s.reward) for s in first.scores)
    assert all(s.draft_logprob is None and s.target_logprob is not None for s in first.scores)


# -- the acceptance distribution ---------------------------------------------------

CHOICES = ("Choice a.\n\n", "Choice b.\n\n", "Choice c.\n\n", "Choice d.\n\n")
CHOICE_REWARDS = dict(zip(CHOICES, (0.2, 0.5, 0.8, 1.0)))


def choice_engines() -> ScriptedEngines:
    """Four equally likely first steps under both models, so a draft's score is beta * reward."""
    script = {"": tuple(Continuation(text, math.log(0.25)) for text in CHOICES)}
    return scripted_engines(draft=script, target=script, rewards=CHOICE_REWARDS)


def test_accepted_draft_follows_softmax_of_score_over_temperature() -> None:
    def settings_for(seed: int) -> SearchSettings:
        return SearchSettings(
            n=4, temperature=1.0, beta=2.0, tau_accept=-100.0, first_step_target=False, max_steps=2, seed=seed
        )

    observed: Counter = Counter()
    expected: dict[str, float] = dict.fromkeys(CHOICES, 0.0)
    for seed in range(2000):
        _, events, engines = solve(settings_for(seed), choice_engines())
        texts = {c.id: c.text for e in of(events, CandidatesDrafted) if e.step == 0 for c in e.candidates}
        scores = {s.id: s.tilted for e in of(events, CandidatesScored) if e.step == 0 for s in e.scores}
        accepted = next(e for e in of(events, StepAccepted) if e.step == 0)
        observed[accepted.text] += 1
        # softmax(score / T) over the distinct drafts of this run
        total = sum(math.exp(s) for s in scores.values())
        for cid, s in scores.items():
            expected[texts[cid]] += math.exp(s) / total
        assert engines.live == 0
    assert chi_square(observed, expected) < CHI2_CRITICAL[3]
    # ...and the test has power: the counts are far from a uniform pick.
    assert chi_square(observed, dict.fromkeys(CHOICES, 500.0)) > 10 * CHI2_CRITICAL[3]


def test_softmax_choice_matches_its_distribution() -> None:
    scores, temperature = [0.0, 1.0, 2.0], 0.5
    weights = [math.exp(s / temperature) for s in scores]
    rng = random.Random(1)
    draws = Counter(softmax_choice(scores, temperature, 1, rng)[0] for _ in range(3000))
    expected = {i: 3000 * w / sum(weights) for i, w in enumerate(weights)}
    assert chi_square(draws, expected) < CHI2_CRITICAL[2]


def test_softmax_choice_without_replacement_is_sequential_softmax() -> None:
    scores, temperature = [0.0, 0.5, 1.5], 1.0
    weights = [math.exp(s / temperature) for s in scores]
    rng = random.Random(2)
    pairs = Counter(tuple(softmax_choice(scores, temperature, 2, rng)) for _ in range(4000))
    expected = {}
    for a, b in permutations(range(3), 2):
        expected[(a, b)] = 4000 * weights[a] / sum(weights) * weights[b] / (sum(weights) - weights[a])
    assert chi_square(pairs, expected) < CHI2_CRITICAL[5]
    assert all(a != b for a, b in pairs)


def test_zero_temperature_takes_the_best_scores() -> None:
    rng = random.Random(0)
    assert softmax_choice([0.1, 3.0, 2.0, 3.0], 0.0, 2, rng) == [1, 3]
    assert softmax_choice([5.0], 1.0, 3, rng) == [0]


# -- thresholds --------------------------------------------------------------------------


def test_tau_accept_above_every_score_defers_every_draft_step() -> None:
    finished, events, _engines = solve(SearchSettings(tau_accept=100.0))
    assert not [e for e in of(events, StepAccepted) if e.origin == "draft"]
    deferred = of(events, Deferred)
    assert deferred and all(d.threshold.value == 100.0 and d.best <= 100.0 for d in deferred)
    # Every deferred step is followed by the target writing it.
    for d in deferred:
        assert ("start", d.step, "target") in phases(events)
    assert finished.stats.deferrals == len(deferred) == 2
    # As in the official code, drafts that all complete end the search unverified:
    # the last step is the draft's.
    assert phases(events)[-1] == ("complete", 3) and finished.stats.draft_steps == 1
    assert finished.answer == "42"


def test_tau_accept_below_every_score_accepts_even_wrong_drafts() -> None:
    finished, events, _ = solve(SearchSettings(tau_accept=-100.0, seed=3))
    assert not of(events, Deferred)
    # The draft only knows wrong ones steps after the tens step, so it ends wrong.
    assert finished.answer in {"24", "44", "52", "-18"}


def test_tau_switch_at_one_never_returns_to_the_draft() -> None:
    finished, events, engines = solve(SearchSettings(tau_switch=1.0))
    assert not of(events, SwitchedToDraft)
    assert {e.origin for e in of(events, StepStarted)} == {"target"}
    assert engines.draft is not None and engines.draft.usage.generated == 0
    assert finished.answer == "42" and finished.stats.target_steps == finished.stats.steps


def test_switch_needs_a_reward_above_tau_switch() -> None:
    # The plan step has reward 0.9: a threshold of exactly 0.9 does not switch.
    _, events, _ = solve(SearchSettings(tau_switch=0.9))
    assert ("switch", 0) not in phases(events)
    assert ("start", 1, "target") in phases(events)
    _, events, _ = solve(SearchSettings(tau_switch=0.89))
    assert ("switch", 0) in phases(events)


def test_first_step_from_the_draft_when_asked() -> None:
    _, events, _ = solve(SearchSettings(first_step_target=False))
    assert phases(events)[0] == ("start", 0, "draft")
    _, events, _ = solve(SearchSettings(first_step_target=True))
    assert phases(events)[0] == ("start", 0, "target")


# -- completion and duplicates --------------------------------------------------------


def test_duplicates_are_marked_and_scored_once() -> None:
    _, events, _engines = solve()
    fates = next(e for e in of(events, CandidateFates) if e.step == 1).fates
    scored = next(e for e in of(events, CandidatesScored) if e.step == 1)
    duplicates = [cid for cid, fate in fates.items() if fate == "duplicate"]
    assert duplicates and not set(duplicates) & {s.id for s in scored.scores}
    assert len(fates) == 4 and len(scored.scores) == 4 - len(duplicates)


def test_the_last_step_runs_to_the_end_and_completes() -> None:
    finished, events, _ = solve(SearchSettings(max_steps=2))
    completed = of(events, CandidateCompleted)
    assert completed and all(c.step == 1 for c in completed)
    assert completed[0].reason == "eos"
    # Step 1 had no delimiter, so it wrote the rest of the solution in one go.
    assert finished.solution.count("\n\n") >= 2 and finished.answer in {"42", "24", "44"}


def test_boxed_answer_completes_a_step_that_stopped_at_the_delimiter() -> None:
    boxed = "So it is \\boxed{7}.\n\n"
    script = {"": (Continuation(boxed, -0.1), Continuation("More.\n\n", -0.2))}
    engines = scripted_engines(draft=script, target=script, rewards={boxed: 0.9, "More.\n\n": 0.1})
    finished, events, _ = solve(SearchSettings(first_step_target=False, temperature=0.0, n=1), engines)
    completed = of(events, CandidateCompleted)
    assert [(c.reason, c.answer) for c in completed] == [("boxed", "7")]
    assert finished.answer == "7"


def test_a_rejected_completed_draft_is_still_collected() -> None:
    # The official code collects completed drafts before verification.
    wrong_end = "It is \\boxed{9}."
    script = {
        "": (Continuation(wrong_end, -0.1, eos=True), Continuation(PLAN, -0.1)),
        PLAN: (Continuation("It is \\boxed{42}.", -0.1, eos=True),),
    }
    rewards = {wrong_end: 0.1, PLAN: 0.9, "It is \\boxed{42}.": 0.95}
    engines = scripted_engines(draft=script, target=script, rewards=rewards)
    finished, events, _ = solve(SearchSettings(first_step_target=False, temperature=1.0, n=8), engines)
    completed = {c.answer: c for c in of(events, CandidateCompleted)}
    assert set(completed) == {"9", "42"}
    assert completed["9"].tilted < 7.0 < completed["42"].tilted
    assert finished.answer == "42"  # the best completion by score


def test_vote_selection_weighs_answers_by_reward() -> None:
    # Two drafted endings, both completed at step 0: vote and best-by-score disagree
    # when two low-reward copies of one answer outweigh one high-reward answer.
    ends = ("A \\boxed{1}.", "B \\boxed{1}.", "C \\boxed{2}.")
    script = {"": tuple(Continuation(text, math.log(1 / 3), eos=True) for text in ends)}

    def engines_for() -> ScriptedEngines:
        return scripted_engines(draft=script, target=script, rewards=dict(zip(ends, (0.5, 0.5, 0.8))))

    base = {"first_step_target": False, "temperature": 1.0, "n": 24, "seed": 1}
    best, _, _ = solve(SearchSettings(**base), engines_for())
    vote, events, _ = solve(SearchSettings(answer_selection="vote", **base), engines_for())
    assert len(of(events, CandidateCompleted)) == 3
    assert best.answer == "2" and vote.answer == "1"


# -- beams ---------------------------------------------------------------------------------


def tree_engines() -> ScriptedEngines:
    """Every step offers two distinct continuations of equal likelihood: a binary tree of depth 3."""
    script: dict[str, tuple[Continuation, ...]] = {}
    rewards: dict[str, float] = {}
    states = [""]
    for depth in range(3):
        nxt = []
        for state in states:
            end = "" if depth == 2 else "\n\n"
            children = tuple(f"{state.strip()}{depth}{branch} step.{end}" for branch in "xy")
            script[state] = tuple(Continuation(c, math.log(0.5), eos=depth == 2) for c in children)
            for branch, child in zip("xy", children):
                rewards[child] = 0.9 if branch == "x" else 0.6
            nxt += children
        states = nxt
    return scripted_engines(draft=script, target=script, rewards=rewards)


def test_beam_width_two_keeps_two_prefixes_from_all_beams() -> None:
    settings = SearchSettings(n=4, beam_width=2, temperature=1.0, beta=1.0, tau_accept=-10.0, first_step_target=False)
    finished, events, engines = solve(settings, tree_engines())
    accepted_by_step: dict[int, list[StepAccepted]] = {}
    for e in of(events, StepAccepted):
        accepted_by_step.setdefault(e.step, []).append(e)
    assert [len(v) for v in accepted_by_step.values()] == [2, 2]
    drafted = {c.id: c for e in of(events, CandidatesDrafted) for c in e.candidates}
    step1 = next(e for e in of(events, StepStarted) if e.step == 1)
    # The step extends both kept prefixes, with ceil(4 / 2) = 2 drafts each.
    assert step1.parents == tuple(a.id for a in accepted_by_step[0])
    children = [c for c in drafted.values() if c.id.startswith("1.")]
    assert Counter(c.parent for c in children) == Counter(dict.fromkeys(step1.parents, 2))
    assert len({a.id for a in accepted_by_step[1]}) == 2
    assert finished.answer is None and finished.solution.count("\n\n") == 2
    best = max(of(events, CandidateCompleted), key=lambda c: c.tilted)
    assert finished.solution == best.solution
    assert finished.stats.steps == 3 and engines.live == 0


def test_beam_width_two_prunes_passing_drafts_it_did_not_draw() -> None:
    settings = SearchSettings(n=8, beam_width=2, temperature=1.0, beta=1.0, tau_accept=-10.0, first_step_target=False)
    _, events, _ = solve(settings, tree_engines())
    fates = next(e for e in of(events, CandidateFates) if e.step == 1).fates
    assert Counter(fates.values())["accepted"] == 2
    assert "pruned" in fates.values()


# -- engine calls ------------------------------------------------------------------------------


def count_calls(engines: ScriptedEngines) -> list[str]:
    calls: list[str] = []
    for role in ("draft", "target", "reward"):
        model = getattr(engines, role)
        for method in ("sample", "score", "extend", "start"):
            if not hasattr(model, method):
                continue
            original = getattr(model, method)

            def wrapper(*args, _original=original, _name=f"{role}.{method}", **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            setattr(model, method, wrapper)
    return calls


def test_each_draft_step_makes_one_call_per_model_and_reuses_caches() -> None:
    engines = scripted_engines()
    calls = count_calls(engines)
    _, events, _ = solve(SearchSettings(), engines)
    assert calls[:2] == ["target.start", "draft.start"]
    # Steps: target 0; draft 1; draft 2 deferred -> target 2; draft 3.
    assert calls[2:] == [
        "target.sample", "reward.score",
        "draft.extend", "draft.sample", "target.score", "reward.score",
        "draft.sample", "target.score", "reward.score", "target.sample", "reward.score",
        "draft.extend", "draft.sample", "target.score", "reward.score",
    ]  # fmt: skip
    prompt = len(engines.target.tokenize(engines.target.format_chat(SYSTEM_PROMPT, ARITHMETIC_QUESTION)))
    scored = sum(c.n_tokens for e in of(events, CandidatesDrafted) if e.origin == "draft" for c in e.candidates)
    duplicates = sum(
        next(d.n_tokens for e in of(events, CandidatesDrafted) for d in e.candidates if d.id == cid)
        for e in of(events, CandidateFates)
        for cid, fate in e.fates.items()
        if fate == "duplicate" and "t" not in cid
    )
    # The target never re-reads an accepted draft: it prefilled the prompt and the scored drafts only.
    assert engines.target.usage.prefilled - prompt == scored - duplicates
    # The draft caught up exactly on the two target steps.
    target_steps = [e.text for e in of(events, StepAccepted) if e.origin == "target"]
    catch_up = sum(len(VOCABULARY.encode(t)) for t in target_steps)
    assert engines.draft is not None and engines.draft.usage.prefilled - prompt == catch_up


def test_reward_queries_carry_the_steps_and_the_target_sequence() -> None:
    _, _events, engines = solve()
    queries = engines.reward.queries
    draft_queries = [q for q in queries if q.candidate == TENS]
    assert draft_queries and all(q.steps == (PLAN,) and q.policy_seq is not None for q in draft_queries)
    answer_queries = [q for q in queries if "boxed{42}" in q.candidate]
    assert answer_queries[0].steps == (PLAN, TENS, ONES)


def test_runs_reproduce_with_their_seed() -> None:
    first = solve(SearchSettings(seed=5, temperature=1.0), choice_engines())[1]
    again = solve(SearchSettings(seed=5, temperature=1.0), choice_engines())[1]
    assert first == again
    others = [solve(SearchSettings(seed=s, temperature=1.0), choice_engines())[1] for s in range(6, 12)]
    assert any(o != first for o in others)
