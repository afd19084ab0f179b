"""The equation check: equations between written numbers whose sides differ."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.search.equations import false_equations


def flagged(text: str) -> list[str]:
    return [str(e) for e in false_equations(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So 5 + 7 + 14 = 36 apples.", ["5 + 7 + 14 = 36 (it is 26)"]),
        ("\\[ 4 \\times 20 = 90 \\]", ["4 * 20 = 90 (it is 80)"]),
        ("She pays \\$12 \\cdot 3 = \\$35.", ["12 * 3 = 35 (it is 36)"]),
        ("(12 + 8) / 2 = 11", ["(12 + 8) / 2 = 11 (it is 10)"]),
        ("1,000 + 2,000 = 4,000.", ["1,000 + 2,000 = 4,000 (it is 3000)"]),
        ("\\frac{10}{4} = 3.5", ["((10) / (4)) = 3.5 (it is 2.5)"]),
        ("x = 160 + 80 + 20 = 360", ["160 + 80 + 20 = 360 (it is 260)"]),
        ("\\boxed{5 + 3 = 9}", ["5 + 3 = 9 (it is 8)"]),
        ("7.50 + 6 + 1.25 = 16.25", ["7.50 + 6 + 1.25 = 16.25 (it is 14.75)"]),
        ("60 x 2/3 = 50 loaves", ["60 * 2 / 3 = 50 (it is 40)"]),
        ("Emma has 120 – 80 - 15 = 35 more", ["120 - 80 - 15 = 35 (it is 25)"]),
        ("Totals:\n- 5 + 3 = 9\n", ["5 + 3 = 9 (it is 8)"]),  # a list marker starts the line
    ],
)
def test_false_equations_are_found_and_say_what_the_left_side_is(text: str, expected: list[str]) -> None:
    assert flagged(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Billy took \\(2 \\times 5 = 10\\) fries.",
        "10 / 3 = 3.33",  # rounded at the last written digit
        "7 / 2 = 3",  # cut off: whole boxes
        "12 + 8 / 2 = 10",  # read left to right it is right
        "2 hours * 60 = 120 minutes",  # a unit ends the left side: only "60" is left
        "20% * 50 = 10",  # a percent sign ends it too
        "0.25 * 80 = 20%",  # a percent on the right is not checked
        "45 + 5 = 2x",  # a coefficient, not a result
        "x^2 + 5 = 9",  # the left side starts inside a term
        "S2 + 1 = 5",
        "x = 5 + 3",  # the right side is an expression
        "3 * 4 = 12 = 13",  # "12 = 13" has no operator
        "- 5 + 3 = 8",  # a bullet, not a minus
        "1. 5 + 3 = 8",  # a list number
        # From GSM8K's and MATH's reference solutions: a run that starts inside
        # words or another term is not a left side.
        "12 slices * 1/3 = 4 slices",
        "15 pages x 1/3 = 5 pages",
        "300 x 1/5 = 60 pencils",
        "Mr. Tan paid $400 000 x 3/100 = $12 000 for the fees.",
        "1 + 3 + 1/2 + 1 1/2 + 2 = 8 hours",
        "(x - 90) + (2x - 135) + 90 + 60 + 15 + 60 + 15 + 15 = 360",
        "5 pounds * 2 - 3 = 7 pounds/sheep",
        "1/3 of 12 = 4",
        "4 + 4 <= 9 and 4 + 4 >= 7 and 2 + 2 == 4",
        "5 / 0 = 3",  # no value to compare
        "No equation here: 42.",
        "",
    ],
)
def test_what_is_not_a_false_equation(text: str) -> None:
    assert flagged(text) == []


operands = st.integers(min_value=0, max_value=10_000)
operators = st.sampled_from(["+", "-", "*"])


@given(st.lists(st.tuples(operators, operands), min_size=1, max_size=5), operands, st.integers(1, 1000))
def test_written_sums_are_checked_exactly(rest: list[tuple[str, int]], first: int, off: int) -> None:
    text = f"{first}" + "".join(f" {op} {n}" for op, n in rest)
    value = eval(text)  # integers and + - * only: the reference value
    left_to_right = first
    for op, n in rest:
        left_to_right = eval(f"{left_to_right} {op} {n}")
    assert flagged(f"So {text} = {value} in all.") == []
    assert flagged(f"So {text} = {left_to_right} in all.") == []  # sloppy, not wrong
    assume(value + off != left_to_right)
    (wrong,) = false_equations(f"So {text} = {value + off} in all.")
    assert wrong.value == Fraction(value)
    assert wrong.written == str(value + off)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "math500.jsonl").is_file(), reason="needs ../shared/data")
def test_reference_solutions_raise_no_false_alarm() -> None:
    """The written solutions of GSM8K (from row 200) and MATH500: 6,518 "=" between them,
    and the only equations flagged are the two that are false as written."""
    found = []
    for name, first in (("gsm8k", 200), ("math500", 0)):
        rows = [json.loads(line) for line in (SHARED_DATA / f"{name}.jsonl").read_text().splitlines()][first:]
        for row in rows:
            solution = re.sub(r"<<[^>]*>>", "", row["solution"])  # GSM8K's calculator notes
            found += [(row["id"], str(e)) for e in false_equations(solution)]
    assert found == [
        ("gsm8k-501", "364 / 4 = 273 (it is 91)"),  # "3/4 of a skein ... = 364 / 4 = 273 yards"
        ("gsm8k-1024", "32 - 20 = 300 (it is 12)"),  # "$32 - $20 = $300 left"
    ]
