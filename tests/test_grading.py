"""Golden grading triples: (completion, reference, expected correct)."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest

from app.eval.grading import grade, grade_answer
from app.search.answer import as_number

GOLDEN: list[tuple[str, str, bool]] = [
    # fractions and their spellings
    (r"So $x = \boxed{\dfrac{1}{2}}$.", r"\frac{1}{2}", True),
    (r"\boxed{\tfrac12}", "0.5", True),
    (r"\boxed{1/2}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{3}{4}}", r"\frac{4}{3}", False),
    (r"\boxed{\frac{-1}{2}}", r"-\frac12", True),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", True),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", True),
    # decimals against fractions
    (r"\boxed{0.5}", r"\frac12", True),
    (r"\boxed{\dfrac{9}{4}}", "2.25", True),
    (r"\boxed{0.333}", r"\frac{1}{3}", False),
    (r"\boxed{18.00}", "18", True),
    (r"\boxed{5}", "5.5", False),
    (r"\boxed{1,5}", "1.5", False),  # a decimal comma is a pair, not 1.5
    # degrees and percentages
    (r"The angle is $\boxed{30^\circ}$.", "30", True),
    (r"\boxed{30^{\circ}}", r"30^\circ", True),
    (r"\boxed{90^\circ}", r"\frac{\pi}{2}", False),
    (r"\boxed{50\%}", "50", True),
    (r"\boxed{12}", r"12\%", True),
    # intervals, tuples, sets
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3]", True),
    (r"\boxed{(-\infty, 3)}", r"(-\infty, 3]", False),
    (r"\boxed{[2, 5)}", "(2,5)", False),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(2, 3)}", "(3, 2)", False),
    (r"\boxed{\{1, 2\}}", r"\{2, 1\}", True),
    (r"\boxed{3, 2}", "2, 3", True),  # OlympiadBench joins several answers with ", "
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    # units, in \text{} and bare
    (r"\boxed{12\text{ cm}}", "12", True),
    (r"\boxed{18 \text{ dollars}}", "18", True),
    (r"\boxed{\$1.50}", "1.5", True),
    (r"\boxed{18 eggs}", "18", True),
    (r"\boxed{\text{\$}18}", "18", True),
    (r"\boxed{5 \, \text{cm}^2}", "5", True),
    # several boxes: the last one is the answer
    (r"First \boxed{3}, but that is wrong; the answer is \boxed{5}.", "5", True),
    (r"First \boxed{3}, but that is wrong; the answer is \boxed{5}.", "3", False),
    # GSM8K numbers
    (r"He made a profit of \boxed{70,000} dollars.", "70000", True),
    (r"\boxed{\$1,000,000}", "1000000", True),
    (r"\boxed{1\,000}", "1000", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{18.}", "18", True),
    (r"\boxed{17}", "18", False),
    # negative numbers
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\$5}", "-5", True),
    # assignments and equations
    (r"\boxed{x = 5}", "5", True),
    (r"\boxed{y = 2x + 3}", "y=2x+3", True),
    (r"\boxed{16 - 3 - 4 = 9}", "9", True),
    # symbolic equality
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{\pi}", "3.14", False),
    (r"\boxed{10^{-3}}", "0.001", True),
    # text and multiple choice
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
    (r"\boxed{C}", r"\text{(C)}", True),
    (r"\boxed{4}", r"\text{(D)}", False),
    # amc23 references are floats
    (r"\boxed{27}", "27.0", True),
    # no answer at all
    (r"\boxed{}", "5", False),
    ("The answer is 5.", "5", False),
    ("", "0", False),
    (r"\boxed{", "0", False),
    # bare \boxed and a truncated last box
    (r"so the answer is \boxed 7.", "7", True),
    (r"\boxed{6} ... then \boxed{\frac{1}{", "6", True),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), GOLDEN)
def test_golden(completion: str, reference: str, expected: bool) -> None:
    assert grade(completion, reference).correct is expected


def test_golden_set_is_large_enough() -> None:
    assert len(GOLDEN) >= 40
    assert {e for _, _, e in GOLDEN} == {True, False}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,000", Fraction(1000)),
        (r"\$1.50", Fraction(3, 2)),
        ("18 eggs", Fraction(18)),
        (r"\frac{-1}{2}", Fraction(-1, 2)),
        ("x = 5", Fraction(5)),
        (r"2\sqrt{2}", None),
        ("1,5", None),
    ],
)
def test_as_number(text: str, value: Fraction | None) -> None:
    assert as_number(text) == value


def test_grade_reports_the_judge_and_the_answer() -> None:
    by_rule = grade(r"\boxed{70,000}", "70000")
    assert (by_rule.correct, by_rule.answer, by_rule.judge) == (True, "70,000", "normalised")
    symbolic = grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}")
    assert (symbolic.correct, symbolic.judge) == (True, "math-verify")
    assert grade("no box", "1").judge == "none"


def test_outside_the_main_thread_only_the_normalised_judge_runs() -> None:
    results: dict[str, object] = {}

    def work() -> None:
        results["numeric"] = grade_answer("1,000", "1000")
        results["symbolic"] = grade_answer(r"2\sqrt{2}", r"\sqrt{8}")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results["numeric"].correct is True
    # math-verify would say yes, but it cannot run here; no ValueError escapes
    assert results["symbolic"].correct is False
