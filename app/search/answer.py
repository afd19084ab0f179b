"""Final answers: the last `\\boxed{}` of a text, normalisation, and selection.

Extraction follows the convention of the SPECS code's grader (the Qwen2.5-Math
toolkit): the content of the LAST `\\boxed{...}`, braces matched. Normalisation
only has to make equal answers compare equal for voting; grading against a
reference (symbolic equality) belongs to app/eval.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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


_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")


def normalize(answer: str) -> str:
    """A canonical spelling of an answer, so that votes for "42.0" and "42" count together."""
    text = answer.strip()
    for token in _DROP:
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "")
    text = _TEXT.sub(r"\1", text)
    text = _ASSIGNMENT.sub("", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    text = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", text)
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _NUMBER.match(text) and "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class Completion:
    """A finished solution a search collected."""

    id: str
    solution: str
    answer: str | None
    score: float
    reward: float


def pick_best(completions: Sequence[Completion]) -> Completion:
    """The completion with the highest score (the first one on ties)."""
    return max(completions, key=lambda c: c.score)


def pick_by_vote(completions: Sequence[Completion]) -> Completion:
    """Reward-weighted vote over normalised answers; the best-scoring member of the winning answer.

    Solutions without an answer do not vote; if none has one, the best by score wins.
    """
    weights: dict[str, float] = {}
    for completion in completions:
        if completion.answer is not None:
            key = normalize(completion.answer)
            weights[key] = weights.get(key, 0.0) + completion.reward
    if not weights:
        return pick_best(completions)
    winner = max(weights, key=lambda key: weights[key])
    return pick_best([c for c in completions if c.answer is not None and normalize(c.answer) == winner])


def select(completions: Sequence[Completion], settings: SearchSettings, *, vote: bool = False) -> Completion:
    """The final solution by `settings.answer_selection` (or a vote when the method always votes)."""
    if not completions:
        raise ValueError("there are no completed solutions to choose from")
    if vote or settings.answer_selection == "vote":
        return pick_by_vote(completions)
    return pick_best(completions)
