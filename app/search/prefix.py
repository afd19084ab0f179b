"""Prefixes (accepted partial solutions) and the candidates that extend them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.search.events import Origin, merit
from engines.base import Seq, StopReason

if TYPE_CHECKING:
    from engines.base import Vector


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
    merit: float = 0.0  # of its newest step; the best live prefix answers a search cut short

    @property
    def text(self) -> str:
        return "".join(self.steps)


@dataclass(eq=False)  # a candidate is itself, not its contents
class Candidate:
    """One proposed step after a prefix, with what the models said about it."""

    id: str
    parent: Prefix
    origin: Origin
    text: str
    tokens: list[int]
    stop: StopReason
    seqs: dict[str, Seq]  # role -> parent + tokens, cached (the sampler's; the target's once teacher-forced)
    logprobs: dict[str, float] = field(default_factory=dict)  # role -> normalised step logprob
    reward: float = 0.0
    judged: bool = False  # whether `reward` came from the reward model
    result_prob: float | None = None  # the target's, of the step's least likely result (arithmetic.py)
    false_equation: str | None = None  # the first false equation the step writes (equations.py), when checked
    # The target's final hidden state at the step's end, when the target was
    # opened with hidden states (what a value-head reward reads).
    state: Vector | None = None
    _tilted: float | None = field(default=None, repr=False)

    @property
    def tilted(self) -> float:
        """The tilted score, which only methods that tilt (SPECS) set."""
        if self._tilted is None:
            raise AttributeError(f"candidate {self.id} has no tilted score: its method does not tilt")
        return self._tilted

    @tilted.setter
    def tilted(self, value: float) -> None:
        self._tilted = value

    @property
    def tilted_or_none(self) -> float | None:
        return self._tilted

    @property
    def solution(self) -> str:
        return self.parent.text + self.text

    @property
    def logprob(self) -> float:
        """The step's log-probability under the model that wrote it."""
        return self.logprobs[self.origin]

    @property
    def judged_reward(self) -> float | None:
        return self.reward if self.judged else None

    @property
    def merit(self) -> float:
        return merit(self._tilted, self.judged_reward, self.logprob)
