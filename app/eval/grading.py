"""Is a final answer right? The last `\\boxed{}` of a completion against a reference.

The box is found by `app.search.answer.last_boxed` (braces matched, the last
complete one), the same extraction the searches use to pick answers.

Two judges, either of which may say yes:
- a normalised comparison (units, `$`, `%`, degrees, thousands separators,
  `x = ` prefixes and `\\text{}` wrappers removed; then exact rational or
  string equality), cheap and predictable, which also catches the answers
  GSM8K-style models write with bare unit words ("18 eggs"); it is
  `app.search.answer.answer_key`, the same normalisation the searches vote by;
- math-verify, for everything symbolic (intervals, tuples, sets, `2\\sqrt2`
  against `\\sqrt8`, `0.5` against `\\frac12`).

math-verify times its sympy work with `signal.alarm`, which only works in the
main thread, so outside it (a TUI worker, a thread pool) only the normalised
judge runs. The bench runner grades in the main thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from app.search.answer import answer_key, last_boxed


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


def _strip_dollars(s: str) -> str:
    return s.strip().strip("$").strip()


def normalised_equal(answer: str, reference: str) -> bool:
    """Equal as exact rationals after removing units and formatting, or as
    normalised text: the equality votes count answers by (`answer_key`)."""
    return answer_key(answer) == answer_key(reference) != ""
