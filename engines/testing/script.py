"""What a scripted model follows: for the step it has just finished, the whole
continuations it may write, each with its total log-probability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Continuation:
    """One way the model can go on after a step: its text and total logprob."""

    text: str
    logprob: float
    eos: bool = False  # the model ends the answer after this text


Script = Mapping[str, Sequence[Continuation]]
