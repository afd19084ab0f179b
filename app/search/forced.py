"""An answer in a box: when a finished solution has no `\\boxed{}`, ask the
model for one with a short forced continuation.

Small models often end with "So, 12 + 30 equals 42." and no box; the grader
(and the paper's) reads only the last box, so such a solution counts as wrong
although its answer is there. The model is given the solution followed by
`ANSWER_CUE` and writes greedily up to the closing brace.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.search.answer import last_boxed
from engines.base import LanguageModel, SampleParams, Seq, StopFn, StopReason

ANSWER_CUE = "\n\nThe final answer is $\\boxed{"
# Enough for any number or short expression; a longer box is not an answer.
MAX_ANSWER_TOKENS = 24


@dataclass(frozen=True)
class ForcedAnswer:
    text: str  # what the solution gains: the cue, the answer and the closing brace
    answer: str | None  # the box's content, None when the model wrote no closed box
    tokens: int  # tokens the model read and wrote for it


def force_answer(model: LanguageModel, seq: Seq, *, should_stop: StopFn | None = None) -> ForcedAnswer:
    """The box `model` writes after `seq` (a finished solution), greedily.

    Works on a fork of `seq`, released before returning, so the caller's
    sequence is untouched.
    """
    fork = model.fork(seq)
    try:
        cue = model.tokenize(ANSWER_CUE)
        model.extend(fork, cue)
        written = ""
        used = len(cue)
        # One call per closing brace: an answer like \frac{1}{2} closes more than one.
        for _ in range(4):
            params = SampleParams(temperature=0.0, max_tokens=MAX_ANSWER_TOKENS - (used - len(cue)), delimiter="}")
            if params.max_tokens < 1:
                break
            [[continuation]] = model.sample([fork], 1, params, should_stop=should_stop)
            model.release(fork)
            fork = continuation.seq
            written += continuation.text
            used += len(continuation.tokens)
            if _balanced(written) or continuation.stop is not StopReason.DELIMITER:
                break
        text = ANSWER_CUE + _through_closing_brace(written)
        return ForcedAnswer(text=text, answer=last_boxed(text), tokens=used)
    finally:
        model.release(fork)


def _balanced(written: str) -> bool:
    """Whether the box opened by the cue is closed in `written`."""
    depth = 1
    for char in written:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return True
    return False


def _through_closing_brace(written: str) -> str:
    depth = 1
    for i, char in enumerate(written):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return written[: i + 1] + "$."
    return written
