"""Deterministic scripted models for algorithm and UI tests.

A `ScriptedModel` is a real `LanguageModel` whose "weights" are a script: for
the step it has just finished (the assistant text since the last step
delimiter, "" at the start) it lists whole continuations with their total
log-probability. Sampling picks one continuation with probability
proportional to exp(logprob / T) (T = 0: the most likely one; the first on
ties), which makes frequencies checkable against the script, then emits it
token by token, stopping at the delimiter, EOS or the token cap exactly as a
real engine does. A context the script does not know ends the generation
with EOS. Scoring teacher-forces any text: tokens that follow the script get
their share of the continuation's logprob, others `unknown_logprob` each.

Tokens are pieces of text (runs of whitespace, runs of anything else), with
ids from one process-wide table so every scripted model shares a tokenizer,
as the draft and target of a SPECS pair must. Time is a `FakeClock` that the
models advance by a fixed cost per token, so the timings in events are exact.
Sequences are real handles from a fixed pool; `live` counts the unreleased
ones for leak tests.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from engines.base import (
    STEP_DELIMITER,
    Cancelled,
    ContextFullError,
    EngineError,
    ModelUsage,
    ProgressFn,
    RewardQuery,
    Sampled,
    SampleParams,
    Scored,
    SequencePoolExhausted,
    StopFn,
    StopReason,
)

# The default problem of scripted_engines, importable from here as before.
from engines.testing.arithmetic import ARITHMETIC_DRAFT as ARITHMETIC_DRAFT
from engines.testing.arithmetic import ARITHMETIC_QUESTION as ARITHMETIC_QUESTION
from engines.testing.arithmetic import ARITHMETIC_REWARDS as ARITHMETIC_REWARDS
from engines.testing.arithmetic import ARITHMETIC_TARGET as ARITHMETIC_TARGET
from engines.testing.script import Continuation as Continuation
from engines.testing.script import Script

ASSISTANT_MARKER = "<|assistant|>\n"
EOS_TEXT = "<|eos|>"
_PIECE = re.compile(r"\s+|\S+")


class FakeClock:
    """A monotonic clock that only moves when a model does work."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Vocabulary:
    """Text pieces <-> ids, shared by all scripted models (append-only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {EOS_TEXT: 0}
        self._pieces: list[str] = [EOS_TEXT]

    def encode(self, text: str) -> list[int]:
        with self._lock:
            out = []
            for piece in _PIECE.findall(text):
                if piece not in self._ids:
                    self._ids[piece] = len(self._pieces)
                    self._pieces.append(piece)
                out.append(self._ids[piece])
            return out

    def decode(self, tokens: Sequence[int]) -> str:
        # EOS renders as nothing, like a real detokenizer skipping specials.
        return "".join(self._pieces[t] for t in tokens if t != EOS)


VOCABULARY = _Vocabulary()
EOS = 0


def last_step(context: str, delimiter: str = STEP_DELIMITER) -> str:
    """The state a script is keyed by: the last step, with its delimiter.

    "" at the start; a context that ends inside a step gives that partial step.
    """
    body = context[: -len(delimiter)] if context.endswith(delimiter) else context
    cut = body.rfind(delimiter)
    return context if cut < 0 else context[cut + len(delimiter) :]


def assistant_text(text: str) -> str:
    """What the assistant has written so far (the text after the chat prompt)."""
    cut = text.rfind(ASSISTANT_MARKER)
    return text if cut < 0 else text[cut + len(ASSISTANT_MARKER) :]


@dataclass(eq=False)
class ScriptedSeq:
    id: int
    tokens: list[int] = field(default_factory=list)
    released: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class ScriptedModel:
    """A `LanguageModel` that follows a script (see the module docstring)."""

    def __init__(
        self,
        name: str,
        script: Script,
        *,
        clock: FakeClock | None = None,
        seconds_per_token: float = 0.01,
        seconds_per_prefill_token: float = 0.001,
        unknown_logprob: float = -5.0,
        n_ctx: int = 4096,
        n_seq_max: int = 64,
        states: Callable[[str], Sequence[float]] | None = None,
    ) -> None:
        self.name = name
        self.usage = ModelUsage()
        # A stand-in for hidden states: `states(step)` for the last step of what
        # a sampled or scored sequence holds (None: the model gives none).
        self._states = states
        self.clock = clock or FakeClock()
        self._script = {key: tuple(conts) for key, conts in script.items()}
        self._seconds_per_token = seconds_per_token
        self._seconds_per_prefill_token = seconds_per_prefill_token
        self._unknown_logprob = unknown_logprob
        self._n_ctx = n_ctx
        self._free_ids = list(range(n_seq_max - 1, -1, -1))
        self._live: dict[int, ScriptedSeq] = {}
        self.peak_live = 0  # the most sequences held at once

    # -- bookkeeping ---------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def live(self) -> int:
        """Sequences handed out and not yet released."""
        return len(self._live)

    def _spend(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.usage.seconds += seconds
        self.usage.native_seconds += seconds

    def _new_seq(self, tokens: list[int]) -> ScriptedSeq:
        if len(tokens) > self._n_ctx:
            raise ContextFullError(
                f"{len(tokens)} tokens do not fit the context of {self._n_ctx} tokens of {self.name}; "
                "use a shorter question or a larger context."
            )
        if not self._free_ids:
            raise SequencePoolExhausted(f"all {len(self._live)} sequences of {self.name} are in use.")
        seq = ScriptedSeq(self._free_ids.pop(), list(tokens))
        self._live[seq.id] = seq
        self.peak_live = max(self.peak_live, len(self._live))
        return seq

    def _check(self, seq: object) -> ScriptedSeq:
        if not isinstance(seq, ScriptedSeq) or self._live.get(seq.id) is not seq:
            raise EngineError(f"{self.name} was given a sequence it does not hold (released or foreign).")
        return seq

    def _release_all(self, seqs: Sequence[ScriptedSeq]) -> None:
        for seq in seqs:
            if not seq.released:
                self.release(seq)

    # -- text ------------------------------------------------------------------

    def format_chat(self, system: str, user: str) -> str:
        return f"<|system|>\n{system}\n<|user|>\n{user}\n{ASSISTANT_MARKER}"

    def tokenize(self, text: str) -> list[int]:
        return VOCABULARY.encode(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return VOCABULARY.decode(tokens)

    def continuations(self, context: str) -> tuple[Continuation, ...]:
        """What the script offers after `context` (assistant text)."""
        return self._script.get(last_step(context), ())

    # -- sequences ---------------------------------------------------------------

    def start(self, prompt: str | Sequence[int], *, should_stop: StopFn | None = None) -> ScriptedSeq:
        self.usage.calls += 1
        if should_stop is not None and should_stop():
            raise Cancelled()
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        seq = self._new_seq(tokens)
        self.usage.prefilled += len(tokens)
        self.usage.decoded_rows += len(tokens)
        self._spend(len(tokens) * self._seconds_per_prefill_token)
        return seq

    def fork(self, seq: ScriptedSeq) -> ScriptedSeq:
        return self._new_seq(self._check(seq).tokens)

    def extend(self, seq: ScriptedSeq, tokens: Sequence[int], *, should_stop: StopFn | None = None) -> None:
        seq = self._check(seq)
        if should_stop is not None and should_stop():
            raise Cancelled()
        if seq.n_tokens + len(tokens) > self._n_ctx:
            raise ContextFullError(
                f"{seq.n_tokens + len(tokens)} tokens do not fit the context of {self._n_ctx} tokens of "
                f"{self.name}; use fewer steps or a larger context."
            )
        self.usage.calls += 1
        seq.tokens.extend(tokens)
        self.usage.prefilled += len(tokens)
        self.usage.decoded_rows += len(tokens)
        self._spend(len(tokens) * self._seconds_per_prefill_token)

    def truncate(self, seq: ScriptedSeq, n_tokens: int) -> None:
        del self._check(seq).tokens[n_tokens:]

    def release(self, seq: ScriptedSeq) -> None:
        seq = self._check(seq)
        seq.released = True
        del self._live[seq.id]
        self._free_ids.append(seq.id)

    # -- generation ------------------------------------------------------------

    def _choose(self, conts: Sequence[Continuation], params: SampleParams, rng: random.Random) -> Continuation:
        if params.temperature <= 0:
            return max(conts, key=lambda c: c.logprob)
        scaled = [c.logprob / params.temperature for c in conts]
        top = max(scaled)
        weights = [math.exp(s - top) for s in scaled]
        total = sum(weights)
        if params.top_p < 1.0:
            order = sorted(range(len(conts)), key=lambda i: -weights[i])
            kept, mass = [], 0.0
            for i in order:
                kept.append(i)
                mass += weights[i] / total
                if mass >= params.top_p:
                    break
            conts = [conts[i] for i in kept]
            weights = [weights[i] for i in kept]
        return rng.choices(conts, weights=weights)[0]

    def _plan(self, context: str, params: SampleParams, rng: random.Random) -> tuple[list[int], list[float]]:
        """The tokens (ending in EOS when the script says so) one sample would emit, up to the cap."""
        tokens: list[int] = []
        logprobs: list[float] = []
        text = context
        while len(tokens) < params.max_tokens:
            conts = self.continuations(text)
            if not conts:
                tokens.append(EOS)
                logprobs.append(0.0)
                break
            chosen = self._choose(conts, params, rng)
            piece_ids = self.tokenize(chosen.text)
            each = chosen.logprob / max(len(piece_ids), 1)
            tokens += piece_ids
            logprobs += [each] * len(piece_ids)
            text += chosen.text
            if chosen.eos:
                tokens.append(EOS)
                logprobs.append(0.0)
                break
            if params.delimiter is not None and params.delimiter in chosen.text:
                break
        return tokens, logprobs

    def sample(
        self,
        seqs: Sequence[ScriptedSeq],
        k: int,
        params: SampleParams,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[list[Sampled]]:
        self.usage.calls += 1
        parents = [self._check(s) for s in seqs]
        plans = []
        for s, parent in enumerate(parents):
            context = assistant_text(self.detokenize(parent.tokens))
            for j in range(k):
                rng = random.Random(f"{params.seed}:{s * k + j}")
                plans.append(self._plan(context, params, rng))
        forks: list[ScriptedSeq] = []
        emitted = [0] * len(plans)
        done = [False] * len(plans)
        stops = [StopReason.LENGTH] * len(plans)
        try:
            for i in range(len(plans)):
                forks.append(self._new_seq(parents[i // k].tokens))
            while not all(done):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                # One batched decode step: every live candidate gets one token.
                rows = 0
                for i, (tokens, _) in enumerate(plans):
                    if done[i]:
                        continue
                    if forks[i].n_tokens >= self._n_ctx:
                        raise ContextFullError(
                            f"the context of {self._n_ctx} tokens of {self.name} is full; "
                            "use fewer or shorter steps or a larger context."
                        )
                    forks[i].tokens.append(tokens[emitted[i]])
                    emitted[i] += 1
                    rows += 1
                    stop = self._stop_after(forks[i], tokens, emitted[i], parents[i // k].n_tokens, params)
                    if stop is None and emitted[i] >= len(tokens):
                        stop = StopReason.LENGTH
                    if stop is not None:
                        stops[i], done[i] = stop, True
                self.usage.generated += rows
                self.usage.decoded_rows += rows
                self._spend(self._seconds_per_token)
                if progress is not None:
                    texts = [self.detokenize(forks[i].tokens[parents[i // k].n_tokens :]) for i in range(len(plans))]
                    progress([texts[s * k : (s + 1) * k] for s in range(len(parents))])
        except BaseException:
            self._release_all(forks)
            raise
        drafts: list[list[Sampled]] = [[] for _ in parents]
        for i, (tokens, logprobs) in enumerate(plans):
            n = emitted[i]
            drafts[i // k].append(
                Sampled(
                    tokens=tokens[:n],
                    text=self.detokenize(tokens[:n]),
                    logprobs=logprobs[:n],
                    stop=stops[i],
                    seq=forks[i],
                    hidden=self._state_of(forks[i]),
                )
            )
        return drafts

    def _state_of(self, seq: ScriptedSeq) -> Sequence[float] | None:
        if self._states is None:
            return None
        return self._states(last_step(assistant_text(self.detokenize(seq.tokens))))

    def _stop_after(
        self, fork: ScriptedSeq, tokens: list[int], emitted: int, start: int, params: SampleParams
    ) -> StopReason | None:
        if tokens[emitted - 1] == EOS:
            return StopReason.EOS
        if params.delimiter is not None and params.delimiter in self.detokenize(fork.tokens[start:]):
            return StopReason.DELIMITER
        if emitted >= params.max_tokens:
            return StopReason.LENGTH
        return None

    def token_logprobs(self, context: str, tokens: Sequence[int]) -> list[float]:
        """Teacher-forced logprobs of `tokens` after the assistant text `context`."""
        out: list[float] = []
        text = context
        i = 0
        while i < len(tokens):
            if tokens[i] == EOS:
                # EOS is certain where the script ends an answer or knows nothing more.
                certain = self._ended_here(text) or not self.continuations(text)
                out.append(0.0 if certain else self._unknown_logprob)
                i += 1
                continue
            rest = self.detokenize(tokens[i:])
            match = next((c for c in self.continuations(text) if c.text and rest.startswith(c.text)), None)
            if match is None:
                out.append(self._unknown_logprob)
                text += self.detokenize(tokens[i : i + 1])
                i += 1
                continue
            piece_ids = self.tokenize(match.text)
            each = match.logprob / max(len(piece_ids), 1)
            out += [each] * len(piece_ids)
            text += match.text
            i += len(piece_ids)
        return out[: len(tokens)]

    def _ended_here(self, text: str) -> bool:
        """True when the script's last continuation before `text`'s end had eos."""
        step = last_step(text)
        prior = text[: len(text) - len(step)]
        return any(c.eos and c.text == step for c in self.continuations(prior))

    def score(
        self,
        pairs: Sequence[tuple[ScriptedSeq, Sequence[int]]],
        *,
        should_stop: StopFn | None = None,
    ) -> list[Scored]:
        self.usage.calls += 1
        if should_stop is not None and should_stop():
            raise Cancelled()
        results: list[Scored] = []
        try:
            for parent, tokens in pairs:
                parent = self._check(parent)
                context = assistant_text(self.detokenize(parent.tokens))
                seq = self._new_seq(parent.tokens + list(tokens))
                results.append(
                    Scored(logprobs=self.token_logprobs(context, tokens), seq=seq, hidden=self._state_of(seq))
                )
        except BaseException:
            self._release_all([cast(ScriptedSeq, r.seq) for r in results])
            raise
        total = sum(len(t) for _, t in pairs)
        self.usage.prefilled += total
        self.usage.decoded_rows += total
        self._spend(total * self._seconds_per_prefill_token)
        return results


RewardFn = Callable[[RewardQuery], float]


class ScriptedReward:
    """A `RewardModel` that looks up the newest step's text (or asks a function)."""

    def __init__(
        self,
        name: str,
        rewards: Mapping[str, float] | RewardFn,
        *,
        default: float = 0.5,
        clock: FakeClock | None = None,
        seconds_per_token: float = 0.002,
    ) -> None:
        self.name = name
        self.usage = ModelUsage()
        self.clock = clock or FakeClock()
        self._rewards = rewards
        self._default = default
        self._seconds_per_token = seconds_per_token
        self.queries: list[RewardQuery] = []  # every query since the last reset, for tests

    def _reward(self, query: RewardQuery) -> float:
        if callable(self._rewards):
            return float(self._rewards(query))
        text = query.candidate
        if text in self._rewards:
            return self._rewards[text]
        return self._rewards.get(text.strip(), self._default)

    def score(self, queries: Sequence[RewardQuery], *, should_stop: StopFn | None = None) -> list[float]:
        self.usage.calls += 1
        if should_stop is not None and should_stop():
            raise Cancelled()
        tokens = sum(len(VOCABULARY.encode(q.candidate)) for q in queries)
        self.usage.prefilled += tokens
        self.usage.decoded_rows += tokens
        seconds = tokens * self._seconds_per_token
        self.clock.advance(seconds)
        self.usage.seconds += seconds
        self.usage.native_seconds += seconds
        self.queries.extend(queries)
        return [self._reward(q) for q in queries]

    def reset(self) -> None:
        self.queries.clear()


@dataclass
class ScriptedEngines:
    """The three scripted roles on one fake clock (duck-types `Engines`)."""

    target: ScriptedModel
    reward: ScriptedReward
    draft: ScriptedModel | None
    clock: FakeClock

    @property
    def live(self) -> int:
        """Sequences still held in the draft and the target together."""
        return self.target.live + (self.draft.live if self.draft is not None else 0)


def scripted_engines(
    *,
    draft: Script | None = ARITHMETIC_DRAFT,
    target: Script = ARITHMETIC_TARGET,
    rewards: Mapping[str, float] | RewardFn = ARITHMETIC_REWARDS,
    default_reward: float = 0.5,
    clock: FakeClock | None = None,
    draft_seconds_per_token: float = 0.01,
    target_seconds_per_token: float = 0.04,
    n_ctx: int = 4096,
    n_seq_max: int = 64,
) -> ScriptedEngines:
    """Draft, target and reward for `ARITHMETIC_QUESTION` (or your own scripts).

    With the default SearchSettings a SPECS run on it shows the target's first
    step, a switch to the draft, an accepted draft step, a deferral (every
    draft of the ones step is wrong), a switch back, and the answer 42. The
    scripts follow the assistant text only, so any question gets this
    solution. Pass `draft=None` for a preset without a draft model.
    """
    clock = clock or FakeClock()
    return ScriptedEngines(
        target=ScriptedModel(
            "scripted-target",
            target,
            clock=clock,
            seconds_per_token=target_seconds_per_token,
            seconds_per_prefill_token=target_seconds_per_token / 10,
            n_ctx=n_ctx,
            n_seq_max=n_seq_max,
        ),
        reward=ScriptedReward("scripted-reward", rewards, default=default_reward, clock=clock),
        draft=None
        if draft is None
        else ScriptedModel(
            "scripted-draft",
            draft,
            clock=clock,
            seconds_per_token=draft_seconds_per_token,
            seconds_per_prefill_token=draft_seconds_per_token / 10,
            n_ctx=n_ctx,
            n_seq_max=n_seq_max,
        ),
        clock=clock,
    )
