"""The target's confidence in the results a step writes.

A step like "160 + 80 + 20 = 360" reads well and a judge model of the size
that runs on a laptop often passes it; the slip is in one token. The target
model, asked to continue "160 + 80 + 20 = ", puts almost no probability on
"3", while the mean log-probability of the whole step barely moves. Measured
with scripts/check_results.py on the 141 checkable results of the 0.5B
drafts for the first 30 GSM8K problems, scored by the 1.5B: the 37 wrong ones
have a median probability of 0.000 and 35 fall below 0.2; of the 104 right
ones, one does (the target miscomputed that sum itself). The search already has the
target's per-token log-probabilities of every step it scores (teacher forcing
for drafts, sampling for target steps), so the check costs no model call.

A result is a number that is the whole right-hand side of an "=": in
"= 160 + 80 + 20 = 360" only 360 is one; 160 starts an expression the target
may well have written differently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

_RESULT = re.compile(
    r"=\s*(?:\\?\$\s*)?"  # "=", an optional dollar sign (plain or LaTeX)
    r"(-?\d+(?:,\d{3})*(?:\.\d+)?)"  # the number
    r"(?![\d.,]*\d)"  # all of it
    r"(?!\s*(?:[-+*/×÷^(]|\\times|\\cdot|\\div|\\frac))"  # and not the start of an expression
)


def result_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the results written after "=" in a step."""
    return [m.span(1) for m in _RESULT.finditer(text)]


def token_offsets(tokens: Sequence[int], detokenize: Callable[[Sequence[int]], str], text: str) -> list[int] | None:
    """Start offset of each token in `text`, or None when the tokens' pieces do
    not spell it (a character split across tokens). The pieces may run past
    the text (a step cut inside its last token)."""
    pieces = [detokenize([token]) for token in tokens]
    if not "".join(pieces).startswith(text):
        return None
    offsets = [0]
    for piece in pieces[:-1]:
        offsets.append(offsets[-1] + len(piece))
    return offsets


def results_with_probability(
    text: str,
    tokens: Sequence[int],
    logprobs: Sequence[float],
    detokenize: Callable[[Sequence[int]], str],
) -> list[tuple[tuple[int, int], float]]:
    """Each result's span and the probability the model gives it (the product
    over the tokens that spell it); [] when the step writes no result or its
    tokens cannot be placed in its text."""
    spans = result_spans(text)
    if not spans or len(tokens) != len(logprobs):
        return []
    offsets = token_offsets(tokens, detokenize, text)
    if offsets is None:
        return []
    ends = [*offsets[1:], len(text)]
    return [
        ((start, end), math.exp(sum(lp for lp, a, b in zip(logprobs, offsets, ends) if a < end and b > start)))
        for start, end in spans
    ]


def result_probability(
    text: str,
    tokens: Sequence[int],
    logprobs: Sequence[float],
    detokenize: Callable[[Sequence[int]], str],
) -> float | None:
    """The lowest probability the model gives any result of the step, or None
    when there is none to check."""
    found = results_with_probability(text, tokens, logprobs, detokenize)
    return min(p for _, p in found) if found else None


def checked_reward(reward: float, probability: float | None, threshold: float) -> float:
    """The reward scaled down by p / threshold when the least likely result's
    probability p is below the threshold; unchanged otherwise (or when off)."""
    if threshold <= 0 or probability is None or probability >= threshold:
        return reward
    return reward * probability / threshold
