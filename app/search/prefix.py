"""Prefixes (accepted partial solutions) and the candidates that extend them."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.search.events import Origin
from engines.base import Seq, StopReason


@dataclass
class Prefix:
    """A partial solution kept by a search, cached in one or more models.

    `seqs[role]` holds the prompt and the steps in that role's model, except
    for the tokens in `lag[role]`, which it has not been fed yet: a draft
    catches up on target steps only when it is next asked to sample.
    """

    id: str  # the id of the candidate that became this prefix ("" for the question)
    steps: tuple[str, ...]
    seqs: dict[str, Seq]
    lag: dict[str, list[int]] = field(default_factory=dict)
    score: float = 0.0  # of its newest step; the best live prefix answers a search cut short

    @property
    def text(self) -> str:
        return "".join(self.steps)


@dataclass
class Candidate:
    """One proposed step after a prefix, with what the models said about it."""

    id: str
    parent: Prefix
    origin: Origin
    text: str
    tokens: list[int]
    stop: StopReason
    seqs: dict[str, Seq]  # role -> parent + tokens, cached (the sampler's; the target's once scored)
    logprobs: dict[str, float] = field(default_factory=dict)  # role -> normalised step logprob
    reward: float | None = None
    score: float = 0.0
    result_prob: float | None = None  # the target's, of the step's least likely result (arithmetic.py)

    @property
    def solution(self) -> str:
        return self.parent.text + self.text
