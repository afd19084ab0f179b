"""Final answers: the last `\\boxed{}` of a text, normalisation, and selection.

Extraction follows the convention of the SPECS code's grader (the Qwen2.5-Math
toolkit): the content of the LAST `\\boxed{...}`, braces matched.
Normalisation is shared with grading (app/eval/grading.py), so that a vote
counts together what grading would call the same answer; symbolic equality
against a reference belongs to app/eval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from app.search.events import merit
from app.search.settings import SearchSettings

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """The content of the last complete, non-empty `\\boxed{...}` (or `\\boxed 7`), else None."""
    for match in reversed(list(_BOXED.finditer(text))):
        content = _boxed_content(text[match.end() :], spaced=match.group().endswith(" "))
        if content:
            return content
    return None


def _boxed_content(rest: str, *, spaced: bool) -> str | None:
    if not rest.startswith("{"):
        bare = re.match(r"[^\s$]+", rest) if spaced else None
        return bare.group().rstrip(".") if bare else None
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip()
    return None  # an unclosed brace: a step cut at the token cap


_SIZING = re.compile(r"\\(?:left|right|big|Big|bigl|bigr)(?![A-Za-z])")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_SPACING = re.compile(r"\\[,;:! ]")
_ASSIGNMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\s*=\s*(?=\S)")
_SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_DECIMAL = re.compile(r"^-?\d+\.\d+$")
_LETTER_CHOICE = re.compile(r"\(([a-z])\)")
_UNIT_WORDS = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?:\^\{?\d\}?)?$")
_COMMA_GROUPED = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_FRAC = re.compile(r"(-?)\\frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))")


def normalize(answer: str) -> str:
    """The one canonical spelling of an answer that voting and grading share:
    formatting that never changes a value removed (sizing, `$`, `%`, degrees,
    `\\text{}` wrappers, spacing, `x = ` prefixes), no whitespace, lower case,
    `(C)` as `c`, and plain numbers without thousands separators or trailing zeros."""
    text = _SIZING.sub("", answer.strip())
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    for _ in range(2):  # \text{\textbf{...}}
        text = _WRAPPERS.sub(r"\1", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\displaystyle", "")
    text = _DEGREES.sub("", text)
    text = text.replace("\\%", "").replace("%", "")
    text = _SPACING.sub(" ", text).replace("{,}", ",")
    text = _ASSIGNMENT.sub("", text.strip().rstrip(".").strip())
    text = re.sub(r"\s+", "", text).rstrip(".")
    text = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", text)
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _DECIMAL.match(text):
        text = text.rstrip("0").rstrip(".")
    text = text.lower()
    choice = _LETTER_CHOICE.fullmatch(text)
    if choice:
        return choice.group(1)
    return "0" if text == "-0" else text


def as_number(answer: str) -> Fraction | None:
    """The exact value of a plain numeric answer ("1,000", "\\$1.50", "18 eggs",
    "\\frac{-1}{2}", "x = 5"), or None when it is not one."""
    text = normalize(answer)
    value = _number(text)
    if value is None:
        value = _number(_UNIT_WORDS.sub("", text))
    return value


def _number(text: str) -> Fraction | None:
    if _COMMA_GROUPED.fullmatch(text):
        text = text.replace(",", "")
    if _PLAIN_NUMBER.fullmatch(text):
        try:
            return Fraction(text)
        except (ValueError, ZeroDivisionError):
            return None
    frac = _FRAC.fullmatch(text)
    if frac:
        sign, num_braced, num_digit, den_braced, den_digit = frac.groups()
        num, den = _number(num_braced or num_digit), _number(den_braced or den_digit)
        if num is None or den is None or den == 0:
            return None
        return -num / den if sign else num / den
    return None


def answer_key(answer: str) -> str:
    """What two answers share when they are the same answer: the exact value
    of a number ("0.5", "\\frac12" and "1/2" are all "1/2"), else the
    normalised text ("" for an empty answer)."""
    value = as_number(answer)
    return str(value) if value is not None else normalize(answer)


@dataclass(frozen=True)
class Completion:
    """A finished solution a search collected, with the numbers of its last step."""

    id: str
    solution: str
    answer: str | None
    reward: float | None = None  # None: not judged
    tilted: float | None = None
    logprob: float | None = None

    @property
    def merit(self) -> float:
        value = merit(self.tilted, self.reward, self.logprob)
        return -math.inf if value is None else value


def pick_best(completions: Sequence[Completion]) -> Completion:
    """The completion with the highest merit (the first one on ties)."""
    return max(completions, key=lambda c: c.merit)


def pick_by_vote(completions: Sequence[Completion]) -> Completion:
    """Reward-weighted vote over answers (by `answer_key`); the best member of the winning answer.

    Solutions without an answer do not vote; if none has one, the best by merit wins.
    """
    weights: dict[str, float] = {}
    for completion in completions:
        if completion.answer is not None:
            key = answer_key(completion.answer)
            weights[key] = weights.get(key, 0.0) + (completion.reward or 0.0)
    if not weights:
        return pick_best(completions)
    winner = max(weights, key=lambda key: weights[key])
    return pick_best([c for c in completions if c.answer is not None and answer_key(c.answer) == winner])


def select(completions: Sequence[Completion], settings: SearchSettings, *, vote: bool = False) -> Completion:
    """The final solution by `settings.answer_selection` (or a vote when the method always votes)."""
    if not completions:
        raise ValueError("there are no completed solutions to choose from")
    if vote or settings.answer_selection == "vote":
        return pick_by_vote(completions)
    return pick_best(completions)
