"""The sequences of one GGUF model's llama.cpp context: batched sampling and teacher forcing.

Everything here keeps one set of invariants between the sequences and the KV
cache; the rest lives beside it: the context, its options and every llama.cpp
call in `engines._native`, text in `engines.gguf_model`, drawing tokens from a
row in `engines.sampling` (or inside llama.cpp's graph: `engines.device_sampling`),
which rows teacher forcing decodes in `engines.rows`.

The context has a unified KV cache, so a fork (`seq_cp`) shares its prefix's
cells instead of copying them, and one batch row may carry several sequence
ids. Two rules keep decoding to the rows a search really needs:

- Lazy tails. A sequence is its token list plus how many of those tokens the
  cache holds. The last token of a sampled or scored candidate is not decoded
  until something continues the candidate, so losing candidates never cost
  their last row; `extend` only appends. Before a sequence is sampled or
  scored from, its undecoded tail is decoded (with the output row that gives
  the next token's distribution) and the row is kept. A truncated sequence
  whose kept row is gone re-feeds its last token: at most one re-fed token per
  truncation, and only if it is continued.
- Shared histories. Candidates with identical token histories (forks of one
  beam that sampled the same tokens so far, or scored candidates with a common
  prefix) are decoded as one row carrying all their sequence ids; sampling
  draws each candidate from that row with its own random stream, so results
  equal decoding them one by one (up to llama.cpp's numerics: its quantized
  matrix kernels and its CPU flash attention give a row slightly different
  logits, up to ~0.05 nats on Q4_K_M, depending on what else is in the batch).
  `share_histories=False` turns this off (for tests and benchmarks).

Guards: every batch is chunked to `n_batch` rows; token ids are checked
against the vocabulary; the sequence-id pool and the context raise
`SequencePoolExhausted` / `ContextFullError` naming the numbers; decode return
codes are checked. llama.cpp never sees an input that would abort the process.

Cancellation: a call given `should_stop` checks it between decodes, and long
decodes (a prompt, a teacher-forced chunk, a catch-up) stop inside llama.cpp
(`engines._native.DecodeAbort`); a cancelled call forgets every position it
decoded, so its sequences are as before the call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import cast

import numpy as np

from engines import _native as N
from engines import device_sampling as D
from engines.base import (
    Cancelled,
    ContextFullError,
    EngineError,
    ModelUsage,
    ProgressFn,
    Sampled,
    SampleParams,
    Seq,
    SequencePoolExhausted,
    StopFn,
    StopReason,
    timed,
)
from engines.forcing import TeacherForcing
from engines.gguf_model import GGUFModel
from engines.rows import Rows
from engines.sampling import HostSampler, Sampler, candidate_stream

_PROGRESS_INTERVAL_S = 0.1


class LlamaSeq:
    """A sequence in one LlamaModel's cache (implements `engines.base.Seq`)."""

    __slots__ = ("_hidden", "_id", "_logits", "_model", "_n_cached", "_tokens")

    def __init__(self, model: LlamaModel, seq_id: int, tokens: list[int], n_cached: int, logits: np.ndarray | None):
        self._model = model
        self._id = seq_id
        self._tokens = tokens
        self._n_cached = n_cached  # tokens[:n_cached] are in the KV cache
        # The next-token logits after all tokens (only while nothing is pending).
        self._logits = logits
        # The final hidden state of that row, when the decode that made it kept one.
        self._hidden: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(self._tokens)

    def _ready(self) -> bool:
        return self._logits is not None and self._n_cached == len(self._tokens)

    def __repr__(self) -> str:
        state = f"id {self._id}" if self._id >= 0 else "released"
        return f"<LlamaSeq {self._model.name} {state}, {len(self._tokens)} tokens, {self._n_cached} cached>"


class _Candidate:
    """A continuation being sampled."""

    __slots__ = ("hidden", "limit", "logprobs", "seq", "start", "stop", "stream", "text")

    def __init__(self, seq: LlamaSeq, stream: np.random.Generator, limit: int):
        self.seq = seq
        self.stream = stream  # its own random draws, one per token
        self.start = seq.n_tokens
        self.limit = limit  # most new tokens (step cap or the room left in the context)
        self.text = bytearray()
        self.logprobs: list[float] = []
        self.stop: StopReason | None = None
        self.hidden: np.ndarray | None = None  # of the row its last token was drawn from


class LlamaModel(TeacherForcing, GGUFModel):
    """One GGUF model with one llama.cpp context (implements `engines.base.LanguageModel`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        n_ctx: int | None = None,
        n_seq_max: int = 64,
        n_batch: int = 512,
        n_gpu_layers: int | None = None,
        n_threads: int | None = None,
        flash_attn: str | bool = "auto",
        share_histories: bool = True,
        hidden_states: bool = False,
        hidden_layer: int | None = None,
        sampling: str | None = None,
    ) -> None:
        """`sampling` says where step tokens are drawn: "device" in llama.cpp's
        graph, "host" in numpy, "auto" (the default, or SPECS_LOCAL_SAMPLING) on
        the device when the layers are offloaded to a GPU. `hidden_layer`: the
        hidden states are that layer's output (0-based), not the final state."""
        super().__init__(
            path,
            name=name,
            n_ctx=n_ctx,
            n_seq_max=n_seq_max,
            n_batch=n_batch,
            n_gpu_layers=n_gpu_layers,
            n_threads=n_threads,
            flash_attn=flash_attn,
            hidden_layer=hidden_layer if hidden_states else None,
        )
        self.share_histories = share_histories
        # Sampling and scoring also return the hidden state at each
        # result's last row (what a value-head reward reads). Prompt prefill
        # never asks for them: llama.cpp would make every prompt row an output.
        self.hidden_states = hidden_states
        self.hidden_layer = hidden_layer if hidden_states else None  # None: the final state
        self.sampler: Sampler = HostSampler(self.n_vocab)
        mode = sampling or os.environ.get("SPECS_LOCAL_SAMPLING") or "auto"
        self.device_sampling = D.use_device(mode, gpu_layers=self.gpu_layers, name=self.name)
        self._scratch = np.empty(self.n_vocab, np.float32)  # for the log-normalisers of scored rows
        self._free_ids = list(range(n_seq_max - 1, -1, -1))
        self._live: set[LlamaSeq] = set()

    def close(self) -> None:
        with self._lock:
            for seq in self._live:
                seq._id = -1
            self._live.clear()
            super().close()

    @property
    def n_embd(self) -> int:
        """The width of a hidden state."""
        return self._native.n_embd

    @property
    def live_sequences(self) -> int:
        return len(self._live)

    # --- sequences ------------------------------------------------------------------

    def start(
        self,
        prompt: str | Sequence[int],
        *,
        should_stop: StopFn | None = None,
        usage: ModelUsage | None = None,
    ) -> LlamaSeq:
        """Prefill a prompt; `usage` charges another record (a reward model's) for
        the rows and native time, and leaves wall time to that record's owner."""
        with self._lock, self._timed(usage):
            return self._start(prompt, usage or self.usage, should_stop)

    def fork(self, seq: Seq) -> LlamaSeq:
        with self._lock:
            parent = self._check_seq(seq)
            self._reserve(1)
            return self._fork(parent, self.usage)

    def extend(self, seq: Seq, tokens: Sequence[int], *, should_stop: StopFn | None = None) -> None:
        """Append tokens; they are decoded when the sequence is next continued
        (under that call's `should_stop`: nothing runs here to stop)."""
        with self._lock:
            seq = self._check_seq(seq)
            ids = self._checked_tokens(tokens)
            self._check_room(seq.n_tokens + len(ids), "extending a sequence")
            if ids:
                seq._tokens.extend(ids)
                seq._logits = None

    def truncate(self, seq: Seq, n_tokens: int) -> None:
        with self._lock, timed(self.usage):
            seq = self._check_seq(seq)
            if not 0 <= n_tokens <= seq.n_tokens:
                raise ValueError(f"cannot truncate a sequence of {seq.n_tokens} tokens to {n_tokens}")
            if n_tokens == seq.n_tokens:
                return
            if n_tokens < seq._n_cached:
                self._forget(seq, n_tokens, self.usage)
            del seq._tokens[n_tokens:]
            seq._logits = None

    def release(self, seq: Seq) -> None:
        """Give the sequence's id back to the pool (releasing twice is harmless)."""
        with self._lock:
            if not isinstance(seq, LlamaSeq) or seq._model is not self:
                raise ValueError(f"{seq!r} does not belong to {self.name}")
            if seq._id < 0:
                return
            with N.NativeTime(self.usage):
                self._native.remove(seq._id)
            self._free_ids.append(seq._id)
            self._live.discard(seq)
            seq._id = -1
            seq._logits = None

    def _start(self, prompt: str | Sequence[int], usage: ModelUsage, should_stop: StopFn | None) -> LlamaSeq:
        tokens = self.prompt_tokens(prompt) if isinstance(prompt, str) else self._checked_tokens(prompt)
        if not tokens:
            raise EngineError(f"cannot start a sequence of {self.name} from an empty prompt.")
        if len(tokens) > self.n_ctx:
            raise ContextFullError(
                f"the prompt has {len(tokens)} tokens but the context of {self.name} holds {self.n_ctx}; "
                "shorten the question or raise the context size."
            )
        self._reserve(1)
        seq = self._new_seq(tokens, 0, None)
        try:
            self._prepare([seq], usage, should_stop)
        except BaseException:
            self._drop(seq)
            raise
        return seq

    def _new_seq(self, tokens: list[int], n_cached: int, logits: np.ndarray | None) -> LlamaSeq:
        seq = LlamaSeq(self, self._free_ids.pop(), tokens, n_cached, logits)
        self._live.add(seq)
        return seq

    def _drop(self, seq: LlamaSeq) -> None:
        if seq._id >= 0:
            self._native.remove(seq._id)
            self._free_ids.append(seq._id)
            self._live.discard(seq)
            seq._id = -1

    def _fork(self, parent: LlamaSeq, usage: ModelUsage) -> LlamaSeq:
        child = self._new_seq(list(parent._tokens), parent._n_cached, parent._logits)
        child._hidden = parent._hidden
        with N.NativeTime(usage):
            self._native.copy_sequence(parent._id, child._id)
        return child

    def _forget(self, seq: LlamaSeq, n_keep: int, usage: ModelUsage) -> None:
        """Drop cached positions from `n_keep` on."""
        with N.NativeTime(usage):
            ok = self._native.remove(seq._id, n_keep)
        if not ok:
            raise EngineError(f"{self.name} cannot remove the tail of a cached sequence.")
        seq._n_cached = n_keep

    @staticmethod
    def _next_row(seq: LlamaSeq) -> np.ndarray:
        """The kept next-token logits of a sequence that `_prepare` made ready."""
        if seq._logits is None:
            raise AssertionError(f"{seq!r} has no kept row")
        return seq._logits

    def _check_seq(self, seq: object) -> LlamaSeq:
        if not isinstance(seq, LlamaSeq) or seq._model is not self:
            raise ValueError(f"{seq!r} is not a sequence of {self.name}")
        if seq._id < 0:
            raise EngineError(f"a released sequence of {self.name} was used again.")
        return seq

    def _timed(self, usage: ModelUsage | None) -> AbstractContextManager[None]:
        """Wall time of a public call; a caller charging its own usage times itself."""
        return timed(self.usage) if usage is None else nullcontext()

    def _reserve(self, n: int) -> None:
        self._check_open()
        if n > len(self._free_ids):
            raise SequencePoolExhausted(
                f"{self.name} needs {n} more sequence ids but only {len(self._free_ids)} of its "
                f"{self.n_seq_max} are free; release finished sequences or raise n_seq_max."
            )

    def _check_room(self, n_tokens: int, doing: str) -> None:
        if n_tokens > self.n_ctx:
            raise ContextFullError(
                f"{doing} needs {n_tokens} tokens but the context of {self.name} holds {self.n_ctx}."
            )

    # --- decoding -------------------------------------------------------------------

    def _refeed(self, seq: LlamaSeq, usage: ModelUsage) -> None:
        """Uncache the last token of a fully cached sequence whose kept row is gone,
        so that decoding it again gives that row."""
        if seq._n_cached == 0:
            raise EngineError(f"cannot continue an empty sequence of {self.name}.")
        self._forget(seq, seq._n_cached - 1, usage)

    def _prepare(self, seqs: Sequence[LlamaSeq], usage: ModelUsage, should_stop: StopFn | None) -> None:
        """Decode the undecoded tails of `seqs` and keep their next-token logits.
        Cancelled, every sequence keeps only what it had cached before."""
        todo: list[LlamaSeq] = []
        for seq in dict.fromkeys(seqs):
            if seq._ready():
                continue
            if seq._n_cached == seq.n_tokens:
                self._refeed(seq, usage)
            todo.append(seq)
        if not todo:
            return
        rows = Rows()
        owners: dict[int, LlamaSeq] = {}
        for seq in todo:
            for position in range(seq._n_cached, seq.n_tokens):
                rows.add(seq._tokens[position], position, [seq._id], output=position == seq.n_tokens - 1)
            owners[len(rows.tokens) - 1] = seq

        def keep(out: N.Decoded) -> None:
            for row, values in zip(out.rows, out.logits):
                owners[int(row)]._logits = values.copy()
                owners[int(row)]._hidden = None

        before = [seq._n_cached for seq in todo]
        try:
            self._native.decode_rows(rows, usage, prefill=True, consume=keep, should_stop=should_stop)
        except BaseException:
            for seq, n_cached in zip(todo, before):
                self._forget(seq, n_cached, usage)
                seq._logits = None
            raise
        for seq in todo:
            seq._n_cached = seq.n_tokens

    # --- sampling -------------------------------------------------------------------

    def sample(
        self,
        seqs: Sequence[Seq],
        k: int,
        params: SampleParams,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[list[Sampled]]:
        with self._lock, timed(self.usage):
            return self._sample([self._check_seq(seq) for seq in seqs], k, params, progress, should_stop)

    def _sample(
        self,
        seqs: list[LlamaSeq],
        k: int,
        params: SampleParams,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
    ) -> list[list[Sampled]]:
        usage = self.usage
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if params.max_tokens < 1 or params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError(f"invalid sampling parameters {params}")
        if not seqs:
            return []
        for seq in seqs:
            if seq.n_tokens >= self.n_ctx:
                raise ContextFullError(
                    f"a sequence of {seq.n_tokens} tokens fills the {self.n_ctx}-token context of {self.name}; "
                    "there is no room for another step."
                )
        self._reserve(len(seqs) * k)
        self._prepare(seqs, usage, should_stop)
        delimiter = params.delimiter.encode("utf-8") if params.delimiter else None
        per_input: list[list[_Candidate]] = []
        groups: dict[int, list[_Candidate]] = {}
        group_rows: list[np.ndarray] = []
        group_hidden: list[np.ndarray | None] = []
        try:
            for i, seq in enumerate(seqs):
                limit = min(params.max_tokens, self.n_ctx - seq.n_tokens)
                members = []
                for j in range(k):
                    stream = candidate_stream(params.seed, i, j)
                    members.append(_Candidate(self._fork(seq, usage), stream, limit))
                per_input.append(members)
                row = self._next_row(seq)
                if self.share_histories:
                    if id(seq) not in groups:
                        group_rows.append(row)
                        group_hidden.append(seq._hidden)
                    groups.setdefault(id(seq), []).extend(members)
                else:
                    for member in members:
                        groups[id(member)] = [member]
                        group_rows.append(row)
                        group_hidden.append(seq._hidden)
            live = list(groups.values())
            rows: Sequence[np.ndarray | D.Drawn] = group_rows
            hidden = group_hidden
            last_progress = time.monotonic()
            chains = self._device_chains([c for members in live for c in members], max(map(len, live)), params)
            with chains or nullcontext():
                while live:
                    if should_stop is not None and should_stop():
                        raise Cancelled()
                    live, rows, hidden = self._advance(
                        live, rows, hidden, params, delimiter, usage, should_stop, chains
                    )
                    if progress is not None and time.monotonic() - last_progress >= _PROGRESS_INTERVAL_S:
                        progress([[bytes(c.text).decode("utf-8", "ignore") for c in members] for members in per_input])
                        last_progress = time.monotonic()
        except BaseException:
            for members in per_input:
                for c in members:
                    self._drop(c.seq)
            raise
        return [
            [
                Sampled(
                    tokens=c.seq._tokens[c.start :],
                    text=bytes(c.text).decode("utf-8", "replace"),
                    logprobs=c.logprobs,
                    stop=cast(StopReason, c.stop),  # set for every candidate once none is live
                    seq=c.seq,
                    hidden=c.hidden,
                )
                for c in members
            ]
            for members in per_input
        ]

    def _device_chains(
        self, candidates: list[_Candidate], largest_row: int, params: SampleParams
    ) -> D.DeviceChains | None:
        """Sampler chains on the candidates' sequences when this model samples in
        llama.cpp's graph. The first token comes from the parents' kept rows on
        the host, so a one-token step needs none."""
        if not self.device_sampling or params.max_tokens == 1:
            return None
        try:
            return D.DeviceChains(
                self._native.ctx,
                [c.seq._id for c in candidates],
                temperature=params.temperature,
                top_p=params.top_p,
                limit=self.sampler.limit,
                draws=largest_row,
            )
        except D.BackendSamplingUnsupported as e:
            D.log.warning("%s samples on the host: %s", self.name, e)
            self.device_sampling = False
            return None

    def _advance(
        self,
        live: list[list[_Candidate]],
        rows: Sequence[np.ndarray | D.Drawn],
        hidden: list[np.ndarray | None],
        params: SampleParams,
        delimiter: bytes | None,
        usage: ModelUsage,
        should_stop: StopFn | None,
        chains: D.DeviceChains | None,
    ) -> tuple[list[list[_Candidate]], list[np.ndarray] | list[D.Drawn], list[np.ndarray | None]]:
        """Sample one token for every live candidate (group g draws from rows[g],
        or takes what the device drew there; the row's hidden state is hidden[g]
        when kept), then decode one row per group of candidates that continue."""
        next_groups: list[list[_Candidate]] = []
        step = Rows()
        for group, row, state in zip(live, rows, hidden):
            if isinstance(row, D.Drawn):
                picks, logprobs = row
            else:
                picks, logprobs = self.sampler.pick(row, [c.stream for c in group], params)
            buckets: dict[int, list[_Candidate]] = {}
            for c, token, logprob in zip(group, picks, logprobs):
                buckets.setdefault(token, []).append(c)
                c.logprobs.append(logprob)
                c.hidden = state
            for token, members in buckets.items():
                stop = self._stop_reason(members[0], token, delimiter)
                piece = self._piece(token)
                for c in members:
                    c.seq._tokens.append(token)
                    c.text += piece
                    c.stop = stop
                if stop is None:
                    next_groups.append(members)
                    step.add(token, members[0].seq._n_cached, [c.seq._id for c in members], output=True)
            usage.generated += len(group)
        if not next_groups:
            return next_groups, [], []
        states: list[np.ndarray] = []
        next_rows: list[np.ndarray] | list[D.Drawn]
        if chains is None:
            next_rows = self._decode_rows(step, states, usage, should_stop)
        else:
            next_rows = self._decode_drawing(step, next_groups, chains, states, params, usage, should_stop)
        for members in next_groups:
            for c in members:
                c.seq._n_cached += 1
        next_hidden: list[np.ndarray | None] = list(np.concatenate(states)) if states else [None] * len(next_rows)
        return next_groups, next_rows, next_hidden

    def _decode_rows(
        self, step: Rows, states: list[np.ndarray], usage: ModelUsage, should_stop: StopFn | None
    ) -> list[np.ndarray]:
        """Decode the step's rows: their next-token logits (hidden states, when
        this model keeps them, go to `states`)."""
        decoded: list[np.ndarray] = []

        def keep(out: N.Decoded) -> None:
            # One decode leaves its rows in llama.cpp's buffer until the next
            # decode, which is after they are sampled; rows of a decode split in
            # chunks are copied before the next chunk overwrites them. Hidden
            # states are kept past the next decode, so they are always copied.
            decoded.append(out.logits if len(out.rows) == len(step.tokens) else out.logits.copy())
            if out.hidden is not None:
                states.append(out.hidden.copy())

        self._native.decode_rows(
            step, usage, prefill=False, consume=keep, should_stop=should_stop, hidden=self.hidden_states
        )
        return list(decoded[0] if len(decoded) == 1 else np.concatenate(decoded))

    def _decode_drawing(
        self,
        step: Rows,
        groups: list[list[_Candidate]],
        chains: D.DeviceChains,
        states: list[np.ndarray],
        params: SampleParams,
        usage: ModelUsage,
        should_stop: StopFn | None,
    ) -> list[D.Drawn]:
        """Decode the step's rows with their sampler chains drawing each group's
        next tokens, one uniform of each candidate's stream per token as the
        host would draw it; nothing vocabulary-wide comes back (hidden states,
        when this model keeps them, go to `states`)."""
        for members in groups:
            draws = [c.stream.random() for c in members] if params.temperature > 0 else []
            chains.request([c.seq._id for c in members], draws)
        drawn: list[D.Drawn] = []

        def take(out: N.Decoded) -> None:
            for row in out.rows.tolist():
                drawn.append(chains.take(row - out.start, step.seq_ids[row]))
            if out.hidden is not None:
                states.append(out.hidden.copy())

        self._native.decode_rows(
            step, usage, prefill=False, consume=take, should_stop=should_stop, hidden=self.hidden_states
        )
        return drawn

    def _stop_reason(self, c: _Candidate, token: int, delimiter: bytes | None) -> StopReason | None:
        if self.is_eog(token):
            return StopReason.EOS
        if delimiter is not None:
            piece = self._piece(token)
            tail = bytes(c.text[max(0, len(c.text) - len(delimiter) + 1) :]) + piece
            if delimiter in tail:
                return StopReason.DELIMITER
        if len(c.logprobs) >= c.limit:
            return StopReason.LENGTH
        return None
