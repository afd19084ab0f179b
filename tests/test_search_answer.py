"""Answer extraction, normalisation and the final choice."""

from __future__ import annotations

import pytest

from app.eval.grading import normalised_equal
from app.search.answer import Completion, answer_key, last_boxed, normalize, pick_best, pick_by_vote, select
from app.search.settings import SearchSettings


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{x^{2}+\\sqrt{y}}", "x^{2}+\\sqrt{y}"),
        ("\\boxed{5} and a cut \\boxed{6", "5"),  # the unclosed last one is skipped
        ("\\boxed{4} \\boxed{}", "4"),
        ("\\boxed 7.", "7"),
        ("\\fbox{3}", "3"),
        ("\\boxed7", None),
        ("no answer here", None),
    ],
)
def test_last_boxed(text: str, answer: str | None) -> None:
    assert last_boxed(text) == answer


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("42", "42"),
        ("42.0", "42"),
        ("0.50", "0.5"),
        ("1,000", "1000"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("x = 5", "5"),
        ("90^\\circ", "90"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\text{5 cm}", "5cm"),
        ("$12$", "12"),
        ("-0", "0"),
    ],
)
def test_normalize(raw: str, canonical: str) -> None:
    assert normalize(raw) == canonical


@pytest.mark.parametrize(
    "spellings",
    [
        ("0.5", "\\frac12", "1/2", "\\dfrac{1}{2}", "$0.50$"),
        ("1000", "1,000", "1{,}000", "\\$1,000", "1000 dollars"),
        ("(C)", "C", "\\text{(C)}"),
        ("y = 2x + 3", "2x+3"),
    ],
)
def test_votes_count_together_what_grading_calls_equal(spellings: tuple[str, ...]) -> None:
    assert len({answer_key(s) for s in spellings}) == 1
    assert all(normalised_equal(s, spellings[0]) for s in spellings)
    assert not normalised_equal(spellings[0], "7") and answer_key(spellings[0]) != answer_key("7")


def test_a_vote_counts_spellings_of_one_value_together() -> None:
    pool = [completion("a", "0.5", 1.0, 0.3), completion("b", "\\frac12", 2.0, 0.3), completion("c", "2", 9.0, 0.5)]
    assert pick_by_vote(pool).id == "b"  # 1/2 wins 0.6 to 0.5; its best member


def completion(cid: str, answer: str | None, tilted: float, reward: float) -> Completion:
    return Completion(id=cid, solution=f"... \\boxed{{{answer}}}", answer=answer, reward=reward, tilted=tilted)


def test_best_is_the_highest_merit_first_on_ties() -> None:
    pool = [completion("a", "1", 2.0, 0.1), completion("b", "2", 5.0, 0.2), completion("c", "3", 5.0, 0.9)]
    assert pick_best(pool).id == "b"


def test_vote_sums_rewards_per_normalised_answer() -> None:
    pool = [
        completion("a", "2", 9.0, 0.9),
        completion("b", "1.0", 1.0, 0.5),
        completion("c", "1", 3.0, 0.5),
        completion("d", None, 20.0, 1.0),  # no answer, no vote
    ]
    chosen = pick_by_vote(pool)
    assert chosen.id == "c"  # answer 1 wins 1.0 to 0.9; its best-scoring member
    assert pick_best(pool).id == "d"


def test_vote_without_any_answer_falls_back_to_the_best_merit() -> None:
    pool = [completion("a", None, 1.0, 0.9), completion("b", None, 2.0, 0.1)]
    assert pick_by_vote(pool).id == "b"


def test_select_follows_the_setting_or_the_method() -> None:
    pool = [completion("a", "2", 9.0, 0.4), completion("b", "1", 1.0, 0.3), completion("c", "1", 2.0, 0.3)]
    assert select(pool, SearchSettings()).id == "a"
    assert select(pool, SearchSettings(answer_selection="vote")).id == "c"
    assert select(pool, SearchSettings(), vote=True).id == "c"
    with pytest.raises(ValueError):
        select([], SearchSettings())
