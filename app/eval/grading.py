"""Is a final answer right? The last `\\boxed{}` of a completion against a reference.

The box is found by `app.search.answer.last_boxed` (braces matched, the last
complete one), the same extraction the searches use to pick answers.

Two judges, either of which may say yes:
- a normalised comparison (units, `$`, `%`, degrees, thousands separators,
  `x = ` prefixes and `\\text{}` wrappers removed; then exact rational or
  string equality), cheap and predictable, which also catches the answers
  GSM8K-style models write with bare unit words ("18 eggs");
- math-verify, for everything symbolic (intervals, tuples, sets, `2\\sqrt2`
  against `\\sqrt8`, `0.5` against `\\frac12`).

math-verify times its sympy work with `signal.alarm`, which only works in the
main thread, so outside it (a TUI worker, a thread pool) only the normalised
judge runs. The bench runner grades in the main thread.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from app.search.answer import last_boxed


@dataclass(frozen=True)
class Grade:
    correct: bool
    answer: str | None  # what was compared: the boxed content, or None
    judge: str  # "normalised" | "math-verify" (the one that said yes, or the last one asked) | "none"


def grade(completion: str | None, reference: str) -> Grade:
    """Grade a whole completion by its last `\\boxed{}` (the search's own
    extraction, `app.search.answer.last_boxed`); no box is wrong."""
    return grade_answer(last_boxed(completion) if completion else None, reference)


def grade_answer(answer: str | None, reference: str) -> Grade:
    """Grade an already extracted final answer against the reference answer."""
    if answer is None or not answer.strip():
        return Grade(False, answer, "none")
    if normalised_equal(answer, reference):
        return Grade(True, answer, "normalised")
    if threading.current_thread() is not threading.main_thread():
        return Grade(False, answer, "normalised")
    return Grade(_math_verify_equal(answer, reference), answer, "math-verify")


def _math_verify_equal(answer: str, reference: str) -> bool:
    from math_verify import parse, verify

    # Both sides go through the same boxed extraction; gold first (verify is asymmetric).
    gold = parse("\\boxed{" + _strip_dollars(reference) + "}")
    predicted = parse("\\boxed{" + _strip_dollars(answer) + "}")
    if not gold or not predicted:
        return False
    return bool(verify(gold, predicted))


# math-verify warns through logging on every timeout; a benchmark of
# hundreds of problems needs the result, not the noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def normalised_equal(answer: str, reference: str) -> bool:
    """Equal as exact rationals after removing units and formatting, or as text."""
    a, b = as_number(answer), as_number(reference)
    if a is not None and b is not None:
        return a == b
    return _text_key(answer) == _text_key(reference) != ""


_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\s*=\s*(?=\S)")
_UNIT_WORDS = re.compile(r"\s*(?<![\\A-Za-z])[A-Za-z]{2,}(?:\s+[A-Za-z]+)*(?:\^\{?\d\}?)?$")
_SPACE_GROUPED = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_COMMA_GROUPED = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_FRAC = re.compile(r"(-?)\\frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))")


def _strip_dollars(s: str) -> str:
    return s.strip().strip("$").strip()


def _tidy(s: str) -> str:
    """The answer without the formatting that never changes its value."""
    s = _strip_dollars(s)
    s = re.sub(r"\\(?:left|right|big|Big|bigl|bigr)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    for _ in range(2):  # \text{\textbf{...}}
        s = _WRAPPERS.sub(r"\1", s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\[,;:! ]", " ", s)
    s = s.replace("{,}", ",")
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(".").strip()
    return _ASSIGNMENT.sub("", s)


def as_number(s: str) -> Fraction | None:
    """The exact value of a plain numeric answer ("1,000", "\\$1.50", "18 eggs",
    "\\frac{-1}{2}", "x = 5"), or None when it is not one."""
    s = _tidy(s)
    value = _number(s)
    if value is None:
        value = _number(_UNIT_WORDS.sub("", s))
    return value


def _number(s: str) -> Fraction | None:
    if _SPACE_GROUPED.fullmatch(s):
        s = s.replace(" ", "")
    s = s.replace(" ", "")
    if _COMMA_GROUPED.fullmatch(s):
        s = s.replace(",", "")
    if _PLAIN_NUMBER.fullmatch(s):
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    frac = _FRAC.fullmatch(s)
    if frac:
        sign, num_braced, num_digit, den_braced, den_digit = frac.groups()
        num, den = _number(num_braced or num_digit), _number(den_braced or den_digit)
        if num is None or den is None or den == 0:
            return None
        return -num / den if sign else num / den
    return None


def _text_key(s: str) -> str:
    s = re.sub(r"\s+", "", _tidy(s)).lower()
    letter_choice = re.fullmatch(r"\(([a-z])\)", s)  # "(C)" and "C" are the same choice
    return letter_choice.group(1) if letter_choice else s
