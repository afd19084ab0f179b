"""The small protocols the search depends on.

Nothing here imports llama_cpp: `app/search` programs against these shapes, and
`engines/llama.py` (real models) and `engines/testing/scripted.py` (tests) fill them.

Ownership of sequences: every `Seq` a call returns belongs to the caller, who
must `release` it when done with it (a model has a fixed pool of sequence ids).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    # A hidden state: a row of floats (numpy in the engines, lists in tests).
    Vector = Sequence[float] | npt.NDArray[np.floating]

STEP_DELIMITER = "\n\n"
# The system turn before every question; answers are read from their \boxed{}.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class EngineError(Exception):
    """A model cannot do what was asked; the message is one sentence for the user."""


class ModelLoadError(EngineError):
    """A model file is missing, is not GGUF, is truncated or cannot be loaded."""


class ContextFullError(EngineError):
    """The KV cache or the context window has no room for the tokens asked for."""


class SequencePoolExhausted(EngineError):
    """All sequence ids of a context are in use."""


class VocabularyMismatch(EngineError):
    """Draft and target do not share a vocabulary."""


class ServerError(EngineError):
    """A model server failed or refused a call (unreachable, 5xx after retries, 4xx)."""


class Cancelled(Exception):
    """Raised inside a model call when the caller's `should_stop` says so."""


class StopReason(str, Enum):
    DELIMITER = "delimiter"  # the step delimiter appeared in the decoded text
    EOS = "eos"  # end of generation token
    LENGTH = "length"  # the token cap of the step


@dataclass(frozen=True)
class SampleParams:
    temperature: float = 0.3
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    # None generates to EOS or the cap (the last step of a search).
    delimiter: str | None = STEP_DELIMITER


@runtime_checkable
class Seq(Protocol):
    """An opaque handle to a sequence cached in one model's context."""

    @property
    def n_tokens(self) -> int: ...


@dataclass
class Sampled:
    """One sampled continuation of a sequence (a draft's candidate step, or the target's own)."""

    tokens: list[int]
    text: str
    logprobs: list[float]  # per token, under the sampling model, unscaled (T=1)
    stop: StopReason
    seq: Seq  # parent + these tokens, cached in the sampling model; the caller owns it
    # The model's final hidden state at the row that predicted the last token,
    # when the model was opened with hidden states on (None otherwise).
    hidden: Vector | None = None


@dataclass
class Scored:
    """Teacher-forced log-probabilities of a token list after a sequence."""

    logprobs: list[float]
    seq: Seq  # parent + the scored tokens, cached; the caller owns it
    # The final hidden state at the row that predicts the last scored token,
    # when the model was opened with hidden states on (None otherwise).
    hidden: Vector | None = None


@dataclass
class ModelUsage:
    """What one model has cost so far. Counters only grow; `snapshot` to diff."""

    seconds: float = 0.0  # wall time inside the model's methods
    native_seconds: float = 0.0  # of which inside llama.cpp calls
    generated: int = 0  # tokens sampled
    prefilled: int = 0  # tokens decoded from given text (prompts, scoring, catch-up)
    decoded_rows: int = 0  # batch rows actually sent to the model
    calls: int = 0

    def snapshot(self) -> ModelUsage:
        return ModelUsage(**vars(self))

    def since(self, earlier: ModelUsage) -> ModelUsage:
        return ModelUsage(**{k: v - getattr(earlier, k) for k, v in vars(self).items()})


class timed:
    """Adds the wall time of a `with` block to a usage record."""

    __slots__ = ("_t0", "_usage")

    def __init__(self, usage: ModelUsage) -> None:
        self._usage = usage

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()
        self._usage.calls += 1

    def __exit__(self, *exc: object) -> None:
        self._usage.seconds += time.perf_counter() - self._t0


# Called with the texts of all live candidates so far, grouped per input
# sequence; lets a UI stream drafts as they grow. Must be cheap.
ProgressFn = Callable[[list[list[str]]], None]
# Asked between decodes and, during long decodes, after every step of the
# model's graph (hundreds of times a second): must be cheap. A model call that
# sees it true raises `Cancelled` and leaves its model as it was before the call.
StopFn = Callable[[], bool]


class LanguageModel(Protocol):
    """A causal LM with a cache of many sequences (draft or target)."""

    name: str
    usage: ModelUsage

    @property
    def n_ctx(self) -> int: ...

    def format_chat(self, system: str, user: str) -> str:
        """The model's chat template with a generation prompt, as text."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def start(self, prompt: str | Sequence[int], *, should_stop: StopFn | None = None) -> Seq:
        """Prefill a prompt once (text may hold special tokens)."""
        ...

    def fork(self, seq: Seq) -> Seq: ...

    def extend(self, seq: Seq, tokens: Sequence[int], *, should_stop: StopFn | None = None) -> None:
        """Append tokens (an engine may decode them now or with the next call
        that continues the sequence)."""
        ...

    def truncate(self, seq: Seq, n_tokens: int) -> None: ...

    def release(self, seq: Seq) -> None: ...

    def sample(
        self,
        seqs: Sequence[Seq],
        k: int,
        params: SampleParams,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[list[Sampled]]:
        """k continuations of every sequence, all advanced together."""
        ...

    def score(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        *,
        should_stop: StopFn | None = None,
    ) -> list[Scored]:
        """Teacher-forced per-token logprobs of each token list after its sequence."""
        ...


@dataclass(frozen=True)
class RewardQuery:
    question: str
    steps: tuple[str, ...]  # accepted steps before the candidate
    candidate: str  # the newest step, the one to judge
    # The candidate's sequence in the target model when one is cached there
    # (a judge running on the target forks it instead of re-reading the text).
    policy_seq: Seq | None = field(default=None, compare=False)
    # The target's final hidden state at the candidate's end, when the target
    # was asked for hidden states (what a value-head reward reads).
    policy_state: Vector | None = field(default=None, compare=False)


class RewardModel(Protocol):
    """Scores the newest step of each query with a reward in [0, 1]."""

    name: str
    usage: ModelUsage

    def score(self, queries: Sequence[RewardQuery], *, should_stop: StopFn | None = None) -> list[float]: ...

    def reset(self) -> None:
        """Forget cached prefixes (a new problem starts)."""
        ...
