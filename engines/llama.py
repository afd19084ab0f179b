"""One GGUF model and one llama.cpp context: sequences, batched sampling, teacher forcing.

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
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import cast

import llama_cpp as L
import numpy as np

from engines import _native as N
from engines.base import (
    Cancelled,
    ContextFullError,
    EngineError,
    ModelLoadError,
    ModelUsage,
    ProgressFn,
    Sampled,
    SampleParams,
    Scored,
    Seq,
    SequencePoolExhausted,
    StopFn,
    StopReason,
    VocabularyMismatch,
    timed,
)
from engines.prompts import render_chat, system_user

_FLASH_ATTN = {
    "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
DEFAULT_N_CTX = 4096
_BLOCK = 1024  # tokens per block of the two-level inverse-CDF search
_NUCLEUS_FLOOR = float(np.exp(-30.0))
_PROGRESS_INTERVAL_S = 0.1
# Constants of llama.cpp's speculative example for draft/target compatibility.
_VOCAB_MAX_SIZE_DIFFERENCE = 128
_VOCAB_CHECK_START_TOKEN_ID = 5


class LlamaSeq:
    """A sequence in one LlamaModel's cache (implements `engines.base.Seq`)."""

    __slots__ = ("_id", "_logits", "_model", "_n_cached", "_tokens")

    def __init__(self, model: LlamaModel, seq_id: int, tokens: list[int], n_cached: int, logits: np.ndarray | None):
        self._model = model
        self._id = seq_id
        self._tokens = tokens
        self._n_cached = n_cached  # tokens[:n_cached] are in the KV cache
        # The next-token logits after all tokens (only while nothing is pending).
        self._logits = logits

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

    __slots__ = ("limit", "logprobs", "rng", "seq", "start", "stop", "text")

    def __init__(self, seq: LlamaSeq, rng: np.random.Generator, limit: int):
        self.seq = seq
        self.rng = rng
        self.start = seq.n_tokens
        self.limit = limit  # most new tokens (step cap or the room left in the context)
        self.text = bytearray()
        self.logprobs: list[float] = []
        self.stop: StopReason | None = None


class _Native:
    """Adds the time spent in llama.cpp to a usage record."""

    __slots__ = ("t0", "usage")

    def __init__(self, usage: ModelUsage):
        self.usage = usage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.usage.native_seconds += time.perf_counter() - self.t0


def _free(ctx: object, model: object) -> None:
    if ctx:
        L.llama_free(ctx)
    if model:
        L.llama_model_free(model)


def _row_logsumexp(row: np.ndarray, scratch: np.ndarray) -> tuple[float, float]:
    """(max, log(sum(exp(row)))) through a scratch row, leaving `row` untouched
    (it may be llama.cpp's own logits buffer)."""
    top = float(row.max())
    work = scratch[: len(row)]
    np.subtract(row, top, out=work)
    np.exp(work, out=work)
    return top, top + float(np.log(work.sum()))


def _inverse_cdf(weights: np.ndarray, draws: Sequence[float]) -> list[int]:
    """Indices drawn in proportion to `weights`, one per uniform draw in [0, 1).

    Two levels, so each draw costs one block's cumulative sum, not the whole
    vocabulary's: block totals, then the token inside the chosen block."""
    n = len(weights)
    whole = n // _BLOCK * _BLOCK
    totals = np.empty(-(-n // _BLOCK), np.float64)
    totals[: whole // _BLOCK] = weights[:whole].reshape(-1, _BLOCK).sum(axis=1)
    if whole < n:
        totals[-1] = weights[whole:].sum()
    cumulative = np.cumsum(totals)
    chosen = []
    for target in np.asarray(draws) * cumulative[-1]:
        block = min(int(np.searchsorted(cumulative, target, side="right")), len(cumulative) - 1)
        start = block * _BLOCK
        inside = weights[start : start + _BLOCK]
        below = cumulative[block - 1] if block else 0.0
        index = int(np.searchsorted(np.cumsum(inside, dtype=np.float64), target - below, side="right"))
        if index >= len(inside) or inside[index] == 0:  # rounding past the block's last weighted token
            index = int(np.flatnonzero(inside)[-1])
        chosen.append(start + index)
    return chosen


def _nucleus(weights: np.ndarray, draws: Sequence[float], top_p: float) -> list[int]:
    """Like `_inverse_cdf`, within the most likely tokens that together hold `top_p`
    of the mass. Tokens under e^-30 of the most likely one (weight 1) are left out
    of the sort: together they carry less than V * e^-30 < 2e-8 of the mass."""
    kept = np.flatnonzero(weights > _NUCLEUS_FLOOR)
    kept_weights = weights[kept].astype(np.float64)
    order = np.argsort(-kept_weights, kind="stable")
    cumulative = np.cumsum(kept_weights[order])
    cut = int(np.searchsorted(cumulative, top_p * float(weights.sum(dtype=np.float64)))) + 1
    cumulative = cumulative[:cut]
    picks = np.searchsorted(cumulative, np.asarray(draws) * cumulative[-1], side="right")
    return [int(kept[order[min(int(p), cut - 1)]]) for p in picks]


class LlamaModel:
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
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.usage = ModelUsage()
        self.share_histories = share_histories
        max_seqs = L.llama_max_parallel_sequences()
        if not 1 <= n_seq_max <= max_seqs:
            raise ValueError(f"n_seq_max must be between 1 and {max_seqs}, not {n_seq_max}")
        if n_batch < 1:
            raise ValueError(f"n_batch must be at least 1, not {n_batch}")
        if n_ctx is not None and n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, not {n_ctx}")
        if isinstance(flash_attn, bool):
            flash_attn = "on" if flash_attn else "off"
        if flash_attn not in _FLASH_ATTN:
            raise ValueError(f"flash_attn must be one of {sorted(_FLASH_ATTN)} or a bool, not {flash_attn!r}")
        if n_gpu_layers is None:
            n_gpu_layers = -1 if L.llama_supports_gpu_offload() else 0
        self._model = N.load_model(self.path, n_gpu_layers=n_gpu_layers, vocab_only=False)
        self._ctx = None
        self._finalizer = weakref.finalize(self, _free, None, self._model)
        self.n_ctx_train = L.llama_model_n_ctx_train(self._model)
        self._n_ctx = min(n_ctx or DEFAULT_N_CTX, self.n_ctx_train)
        threads = n_threads or N.default_threads()
        params = L.llama_context_default_params()
        params.n_ctx = self._n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        # llama.cpp reserves an output row per sequence up front and aborts if
        # that exceeds n_outputs_max (which defaults to n_batch).
        params.n_outputs_max = max(n_batch, n_seq_max)
        params.kv_unified = True
        params.flash_attn_type = _FLASH_ATTN[flash_attn]
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        N.clear_errors()
        self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            self._finalizer()
            raise ModelLoadError(
                f"cannot create a {self._n_ctx}-token context for {self.path}: llama.cpp says: {N.first_error()}."
            )
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _free, self._ctx, self._model)
        self._mem = L.llama_get_memory(self._ctx)
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.n_threads = threads
        self.gpu_layers = n_gpu_layers
        # Output rows per decode: llama.cpp keeps a logits buffer as large as the
        # most rows ever asked for at once (n_vocab floats each), so cap it.
        self._max_outputs = max(n_seq_max, min(n_batch, 64))
        self._batch = N.NativeBatch(n_batch)
        self._scratch = np.empty(self.n_vocab, np.float32)
        self._weights = np.empty(self.n_vocab, np.float32)
        self._free_ids = list(range(n_seq_max - 1, -1, -1))
        self._live: set[LlamaSeq] = set()
        self._lock = threading.RLock()
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._sample_limit = self.n_vocab  # lowered by check_shared_vocab
        template = L.llama_model_chat_template(self._model, None)
        self.chat_template: str | None = template.decode("utf-8", "replace") if template else None
        self._bos_text = self._special_text(L.llama_vocab_bos(self._vocab))
        self._eos_text = self._special_text(L.llama_vocab_eos(self._vocab))

    # --- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the weights; the model is unusable afterwards."""
        with self._lock:
            for seq in self._live:
                seq._id = -1
            self._live.clear()
            self._finalizer()
            self._ctx = self._mem = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def live_sequences(self) -> int:
        return len(self._live)

    @property
    def kv_cache_bytes(self) -> int:
        """Size of the f16 KV cache of the whole context."""
        n_head = L.llama_model_n_head(self._model)
        head_dim = L.llama_model_n_embd(self._model) // max(1, n_head)
        kv_width = L.llama_model_n_head_kv(self._model) * head_dim
        return L.llama_model_n_layer(self._model) * L.llama_n_ctx(self._ctx) * 2 * kv_width * 2

    def __repr__(self) -> str:
        return f"<LlamaModel {self.name} n_ctx={self._n_ctx} n_vocab={self.n_vocab}>"

    # --- text -------------------------------------------------------------------

    def format_chat(self, system: str, user: str) -> str:
        return self.render_chat(system_user(system, user), add_generation_prompt=True)

    def render_chat(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """Any conversation through the GGUF's own chat template (ChatML without one)."""
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._bos_text,
            eos_token=self._eos_text,
            model_name=self.name,
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a continuation text: no BOS, special tokens parsed."""
        with self._lock:
            self._check_open()
            return self._tokenize(text, add_special=False)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Token ids of a whole prompt: BOS when the vocabulary wants one (once,
        also when the chat template already wrote it), special tokens parsed."""
        written = bool(self._bos_text) and prompt.startswith(self._bos_text)
        with self._lock:
            self._check_open()
            return self._tokenize(prompt, add_special=not written)

    def detokenize(self, tokens: Sequence[int]) -> str:
        with self._lock:
            self._check_open()
            ids = self._checked_tokens(tokens)
            return b"".join(self._piece(t) for t in ids).decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocabulary's text of one token (special tokens included)."""
        self._check_open()
        (token,) = self._checked_tokens([token])
        return L.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT, <|im_end|>, ...)."""
        known = self._eog.get(token)
        if known is None:
            self._check_open()
            (token,) = self._checked_tokens([token])
            known = self._eog[token] = bool(L.llama_vocab_is_eog(self._vocab, token))
        return known

    def _special_text(self, token: int) -> str:
        return self.token_text(token) if 0 <= token < self.n_vocab else ""

    def _tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
            if n >= 0:
                return list(buf[:n])
            capacity = -n
        raise EngineError(f"{self.name} could not tokenize a text of {len(data)} bytes.")

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = (ctypes.c_char * 64)()
            n = L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = (ctypes.c_char * -n)()
                n = L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _checked_tokens(self, tokens: Sequence[int]) -> list[int]:
        ids = [int(t) for t in tokens]
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {self.name} (0..{self.n_vocab - 1})")
        return ids

    # --- sequences ------------------------------------------------------------------

    def start(self, prompt: str | Sequence[int], *, usage: ModelUsage | None = None) -> LlamaSeq:
        """Prefill a prompt; `usage` charges another record (a reward model's) for
        the rows and native time, and leaves wall time to that record's owner."""
        with self._lock, self._timed(usage):
            return self._start(prompt, usage or self.usage)

    def fork(self, seq: Seq) -> LlamaSeq:
        with self._lock:
            parent = self._check_seq(seq)
            self._reserve(1)
            return self._fork(parent, self.usage)

    def extend(self, seq: Seq, tokens: Sequence[int]) -> None:
        """Append tokens; they are decoded when the sequence is next continued."""
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
            with _Native(self.usage):
                L.llama_memory_seq_rm(self._mem, seq._id, -1, -1)
            self._free_ids.append(seq._id)
            self._live.discard(seq)
            seq._id = -1
            seq._logits = None

    def _start(self, prompt: str | Sequence[int], usage: ModelUsage) -> LlamaSeq:
        tokens = self.prompt_tokens(prompt) if isinstance(prompt, str) else self._checked_tokens(prompt)
        if not tokens:
            raise EngineError(f"cannot start a sequence of {self.name} from an empty prompt.")
        if len(tokens) > self._n_ctx:
            raise ContextFullError(
                f"the prompt has {len(tokens)} tokens but the context of {self.name} holds {self._n_ctx}; "
                "shorten the question or raise the context size."
            )
        self._reserve(1)
        seq = self._new_seq(tokens, 0, None)
        try:
            self._prepare([seq], usage)
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
            L.llama_memory_seq_rm(self._mem, seq._id, -1, -1)
            self._free_ids.append(seq._id)
            self._live.discard(seq)
            seq._id = -1

    def _fork(self, parent: LlamaSeq, usage: ModelUsage) -> LlamaSeq:
        child = self._new_seq(list(parent._tokens), parent._n_cached, parent._logits)
        with _Native(usage):
            L.llama_memory_seq_cp(self._mem, parent._id, child._id, -1, -1)
        return child

    def _forget(self, seq: LlamaSeq, n_keep: int, usage: ModelUsage) -> None:
        """Drop cached positions from `n_keep` on."""
        with _Native(usage):
            ok = L.llama_memory_seq_rm(self._mem, seq._id, n_keep, -1)
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

    def _check_open(self) -> None:
        if self._ctx is None:
            raise EngineError(f"{self.name} was closed.")

    def _reserve(self, n: int) -> None:
        self._check_open()
        if n > len(self._free_ids):
            raise SequencePoolExhausted(
                f"{self.name} needs {n} more sequence ids but only {len(self._free_ids)} of its "
                f"{self.n_seq_max} are free; release finished sequences or raise n_seq_max."
            )

    def _check_room(self, n_tokens: int, doing: str) -> None:
        if n_tokens > self._n_ctx:
            raise ContextFullError(
                f"{doing} needs {n_tokens} tokens but the context of {self.name} holds {self._n_ctx}."
            )

    # --- decoding -------------------------------------------------------------------

    def _decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        counts: Sequence[int],
        ids: Sequence[int],
        outputs: Sequence[bool],
        usage: ModelUsage,
        *,
        prefill: bool,
        consume: Callable[[np.ndarray, np.ndarray], None] | None = None,
        should_stop: StopFn | None = None,
    ) -> None:
        """Decode rows in chunks of at most n_batch rows (and `_max_outputs` output
        rows); `consume(row_indices, logits)` sees each chunk's output rows."""
        tokens_a = np.asarray(tokens, np.int32)
        positions_a = np.asarray(positions, np.int32)
        counts_a = np.asarray(counts, np.int32)
        ids_a = np.asarray(ids, np.int32)
        outputs_a = np.asarray(outputs, np.int8)
        id_starts = np.cumsum(counts_a) - counts_a
        n = len(tokens_a)
        start = 0
        while start < n:
            end = min(n, start + self.n_batch)
            out_rows = np.flatnonzero(outputs_a[start:end]) + start
            if len(out_rows) > self._max_outputs:
                end = int(out_rows[self._max_outputs])
                out_rows = out_rows[: self._max_outputs]
            if should_stop is not None and should_stop():
                raise Cancelled()
            id_end = int(id_starts[end - 1] + counts_a[end - 1])
            batch = self._batch.fill(
                tokens_a[start:end],
                positions_a[start:end],
                counts_a[start:end],
                ids_a[int(id_starts[start]) : id_end],
                outputs_a[start:end],
            )
            N.clear_errors()
            with _Native(usage):
                rc = L.llama_decode(self._ctx, batch)
            if rc != 0:
                raise self._decode_error(rc, end - start)
            usage.decoded_rows += end - start
            if prefill:
                usage.prefilled += end - start
            if consume is not None and len(out_rows):
                logits = np.ctypeslib.as_array(L.llama_get_logits(self._ctx), shape=(len(out_rows), self.n_vocab))
                consume(out_rows, logits)
            start = end

    def _decode_error(self, rc: int, n_rows: int) -> EngineError:
        if rc == 1:
            return ContextFullError(
                f"the KV cache of {self.name} ({self._n_ctx} cells) has no room for {n_rows} more tokens "
                "next to the live sequences; release sequences or raise the context size."
            )
        return EngineError(f"llama.cpp could not decode a batch for {self.name} (code {rc}): {N.first_error()}.")

    def _prepare(self, seqs: Sequence[LlamaSeq], usage: ModelUsage) -> None:
        """Decode the undecoded tails of `seqs` and keep their next-token logits."""
        todo: list[LlamaSeq] = []
        for seq in dict.fromkeys(seqs):
            if seq._ready():
                continue
            if seq._n_cached == seq.n_tokens:  # cached but its row is gone: re-feed one token
                if seq._n_cached == 0:
                    raise EngineError(f"cannot continue an empty sequence of {self.name}.")
                self._forget(seq, seq._n_cached - 1, usage)
            todo.append(seq)
        if not todo:
            return
        tokens: list[int] = []
        positions: list[int] = []
        ids: list[int] = []
        outputs: list[bool] = []
        owners: dict[int, LlamaSeq] = {}
        for seq in todo:
            tail = seq._tokens[seq._n_cached :]
            tokens += tail
            positions += range(seq._n_cached, seq.n_tokens)
            ids += [seq._id] * len(tail)
            outputs += [False] * (len(tail) - 1) + [True]
            owners[len(tokens) - 1] = seq

        def keep(rows: np.ndarray, logits: np.ndarray) -> None:
            for row, values in zip(rows, logits):
                owners[int(row)]._logits = values.copy()

        before = [seq._n_cached for seq in todo]
        try:
            self._decode(tokens, positions, [1] * len(tokens), ids, outputs, usage, prefill=True, consume=keep)
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
            return self._sample(seqs, k, params, progress, should_stop, self.usage)

    def _sample(
        self,
        given: Sequence[Seq],
        k: int,
        params: SampleParams,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
        usage: ModelUsage,
    ) -> list[list[Sampled]]:
        seqs = [self._check_seq(seq) for seq in given]
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if params.max_tokens < 1 or params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError(f"invalid sampling parameters {params}")
        if not seqs:
            return []
        for seq in seqs:
            if seq.n_tokens >= self._n_ctx:
                raise ContextFullError(
                    f"a sequence of {seq.n_tokens} tokens fills the {self._n_ctx}-token context of {self.name}; "
                    "there is no room for another step."
                )
        self._reserve(len(seqs) * k)
        self._prepare(seqs, usage)
        delimiter = params.delimiter.encode("utf-8") if params.delimiter else None
        per_input: list[list[_Candidate]] = []
        groups: dict[int, list[_Candidate]] = {}
        group_rows: list[np.ndarray] = []
        try:
            for i, seq in enumerate(seqs):
                limit = min(params.max_tokens, self._n_ctx - seq.n_tokens)
                members = []
                for j in range(k):
                    rng = np.random.default_rng([params.seed, i, j])
                    members.append(_Candidate(self._fork(seq, usage), rng, limit))
                per_input.append(members)
                row = self._next_row(seq)
                if self.share_histories:
                    if id(seq) not in groups:
                        group_rows.append(row)
                    groups.setdefault(id(seq), []).extend(members)
                else:
                    for member in members:
                        groups[id(member)] = [member]
                        group_rows.append(row)
            live = list(groups.values())
            rows = group_rows
            last_progress = time.monotonic()
            while live:
                if should_stop is not None and should_stop():
                    raise Cancelled()
                live, rows = self._advance(live, rows, params, delimiter, usage, should_stop)
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
                )
                for c in members
            ]
            for members in per_input
        ]

    def _advance(
        self,
        live: list[list[_Candidate]],
        rows: list[np.ndarray],
        params: SampleParams,
        delimiter: bytes | None,
        usage: ModelUsage,
        should_stop: StopFn | None,
    ) -> tuple[list[list[_Candidate]], list[np.ndarray]]:
        """Sample one token for every live candidate (group g draws from rows[g]),
        then decode one row per group of candidates that continue."""
        next_groups: list[list[_Candidate]] = []
        tokens: list[int] = []
        positions: list[int] = []
        counts: list[int] = []
        ids: list[int] = []
        for group, row in zip(live, rows):
            picks, logprobs = self._pick(row, group, params)
            buckets: dict[int, list[_Candidate]] = {}
            for c, token, logprob in zip(group, picks, logprobs):
                buckets.setdefault(token, []).append(c)
                c.logprobs.append(logprob)
            for token, members in buckets.items():
                stop = self._stop_reason(members[0], token, delimiter)
                piece = self._piece(token)
                for c in members:
                    c.seq._tokens.append(token)
                    c.text += piece
                    c.stop = stop
                if stop is None:
                    next_groups.append(members)
                    tokens.append(token)
                    positions.append(members[0].seq._n_cached)
                    counts.append(len(members))
                    ids.extend(c.seq._id for c in members)
            usage.generated += len(group)
        if not next_groups:
            return next_groups, []
        chunks: list[np.ndarray] = []

        def keep(out_rows: np.ndarray, logits: np.ndarray) -> None:
            # One decode leaves its rows in llama.cpp's buffer until the next
            # decode, which is after they are sampled; rows of a decode split in
            # chunks are copied before the next chunk overwrites them.
            chunks.append(logits if len(out_rows) == len(tokens) else logits.copy())

        self._decode(
            tokens,
            positions,
            counts,
            ids,
            [True] * len(tokens),
            usage,
            prefill=False,
            consume=keep,
            should_stop=should_stop,
        )
        for members in next_groups:
            for c in members:
                c.seq._n_cached += 1
        return next_groups, list(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))

    def _pick(self, row: np.ndarray, group: list[_Candidate], params: SampleParams) -> tuple[list[int], list[float]]:
        """Tokens for the candidates of one group and their log-probabilities at
        T=1, read from `row` without writing to it."""
        row = row[: self._sample_limit]  # ids the target lacks are never sampled
        top, log_z = _row_logsumexp(row, self._scratch)
        if params.temperature == 0:
            token = int(row.argmax())
            return [token] * len(group), [float(row[token]) - log_z] * len(group)
        if params.temperature == 1:
            weights = self._scratch[: len(row)]  # exp(row - top), left by the logsumexp
        else:
            weights = self._weights[: len(row)]
            np.subtract(row, top, out=weights)
            weights *= 1 / params.temperature
            np.exp(weights, out=weights)
        draws = [c.rng.random() for c in group]
        chosen = _nucleus(weights, draws, params.top_p) if params.top_p < 1 else _inverse_cdf(weights, draws)
        return chosen, [float(row[t]) - log_z for t in chosen]

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

    # --- teacher forcing --------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        *,
        should_stop: StopFn | None = None,
    ) -> list[Scored]:
        with self._lock, timed(self.usage):
            logprobs, children = self._teacher_force(pairs, None, self.usage, should_stop)
            return [Scored(list(lp), child) for lp, child in zip(logprobs, children)]

    def next_token_logprobs(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        token_ids: Sequence[int],
        *,
        usage: ModelUsage | None = None,
        should_stop: StopFn | None = None,
    ) -> tuple[np.ndarray, list[LlamaSeq]]:
        """Log-probabilities (T=1) of `token_ids` right after each seq + tokens.

        Returns an array (len(pairs), len(token_ids)) and the extended sequences
        (fully cached; the caller owns them). `usage` charges another record, as
        in `start` (a reward model running on this model keeps its own accounts).
        """
        with self._lock, self._timed(usage):
            ids = self._checked_tokens(token_ids)
            results, children = self._teacher_force(pairs, ids, usage or self.usage, should_stop)
            return (np.stack(results) if results else np.empty((0, len(ids)))), children

    def _teacher_force(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        next_ids: list[int] | None,
        usage: ModelUsage,
        should_stop: StopFn | None,
    ) -> tuple[list[np.ndarray], list[LlamaSeq]]:
        """Decode each pair's tokens after its sequence, one trie row per distinct
        (history, token) when sharing, and read log-probabilities.

        Scoring (`next_ids` None) asks for each token's log-probability and leaves
        each candidate's last token undecoded; `next_ids` asks for those ids after
        all tokens, which are then all decoded."""
        scoring = next_ids is None
        wanted_ids = next_ids or []
        checked = []
        for seq, cand in pairs:
            parent = self._check_seq(seq)
            ids = self._checked_tokens(cand)
            self._check_room(parent.n_tokens + len(ids), "scoring a candidate")
            checked.append((parent, ids))
        self._reserve(len(checked))
        # A row read at depth 0 comes from the parent's kept logits; re-feed one
        # token where they are gone.
        for parent, cand in checked:
            reads_parent_row = (scoring and cand) or (not scoring and not cand)
            if reads_parent_row and parent._n_cached == parent.n_tokens and parent._logits is None:
                if parent._n_cached == 0:
                    raise EngineError(f"cannot continue an empty sequence of {self.name}.")
                self._forget(parent, parent._n_cached - 1, usage)
        parents = list(dict.fromkeys(p for p, _ in checked))
        parent_cached = {id(p): p._n_cached for p in parents}
        children: list[LlamaSeq] = []
        joined: list[LlamaSeq] = []
        try:
            children = [self._fork(parent, usage) for parent, _ in checked]
            results: list[np.ndarray] = [
                np.empty(len(cand) if scoring else len(wanted_ids), np.float64) for _, cand in checked
            ]
            # Trie nodes (one decode row each), in creation order: a node comes after its parent.
            node_of: dict[tuple[object, int], int] = {}
            tokens: list[int] = []
            positions: list[int] = []
            members: list[list[int]] = []
            outputs: list[bool] = []
            reads: dict[int, list[tuple[int, int, list[int]]]] = {}  # node -> (pair, slot, ids)
            keeps: dict[int, LlamaSeq] = {}  # node -> sequence whose next-token logits it gives
            direct: list[tuple[LlamaSeq, int, int, list[int]]] = []  # reads of a parent's kept row
            for j, ((parent, cand), child) in enumerate(zip(checked, children)):
                tail = parent._tokens[parent._n_cached :]
                path = tail + cand
                # Scoring leaves a candidate's last token undecoded.
                n_decode = len(path) - 1 if scoring and cand else len(path)
                joins = self.share_histories and bool(tail)
                node: object = ("root", id(parent)) if self.share_histories else ("root", j)
                trail: list[int] = []
                for depth in range(1, n_decode + 1):
                    key = (node, path[depth - 1])
                    index = node_of.get(key)
                    if index is None:
                        index = node_of[key] = len(tokens)
                        tokens.append(path[depth - 1])
                        positions.append(parent._n_cached + depth - 1)
                        members.append([parent._id] if joins and depth <= len(tail) else [])
                        outputs.append(False)
                        if joins and depth == len(tail):
                            outputs[index] = True
                            keeps[index] = parent
                    members[index].append(child._id)
                    trail.append(index)
                    node = index
                wanted = (
                    [(slot, len(tail) + slot, [t]) for slot, t in enumerate(cand)]
                    if scoring
                    else [(0, len(path), wanted_ids)]
                )
                for slot, depth, ids in wanted:
                    if depth == 0:
                        direct.append((parent, j, slot, ids))
                    else:
                        outputs[trail[depth - 1]] = True
                        reads.setdefault(trail[depth - 1], []).append((j, slot, ids))
                if scoring and not cand and tail:  # an empty candidate is fully cached: keep its row
                    outputs[trail[-1]] = True
                    keeps.setdefault(trail[-1], child)
            joined = [p for p in parents if self.share_histories and p._n_cached < p.n_tokens]
            scratch = self._scratch

            def read(rows: np.ndarray, logits: np.ndarray) -> None:
                for row_index, row in zip(rows.tolist(), logits):
                    if row_index in reads:
                        _, log_z = _row_logsumexp(row, scratch)
                        for j, slot, ids in reads[row_index]:
                            results[j][slot : slot + len(ids)] = row[ids] - log_z
                    if row_index in keeps:
                        keeps[row_index]._logits = row.copy()

            for parent, j, slot, ids in direct:
                row = self._next_row(parent)
                _, log_z = _row_logsumexp(row, scratch)
                results[j][slot : slot + len(ids)] = row[ids] - log_z
            flat_ids = [i for row_members in members for i in row_members]
            self._decode(
                tokens,
                positions,
                [len(m) for m in members],
                flat_ids,
                outputs,
                usage,
                prefill=True,
                consume=read,
                should_stop=should_stop,
            )
        except BaseException:
            for child in children:
                self._drop(child)
            for parent in joined:
                self._forget(parent, parent_cached[id(parent)], usage)
                parent._logits = None
            raise
        for parent in joined:
            parent._n_cached = parent.n_tokens
        for (parent, cand), child in zip(checked, children):
            n_path = parent.n_tokens - parent_cached[id(parent)] + len(cand)
            child._tokens.extend(cand)
            child._n_cached = parent_cached[id(parent)] + (n_path - 1 if scoring and cand else n_path)
            if cand:
                child._logits = None
            elif child._logits is None:
                child._logits = parent._logits
        return results, children


# --- draft/target compatibility ---------------------------------------------------


def _vocab_problem(draft: L.llama_vocab_p, target: L.llama_vocab_p) -> str | None:
    """Why a draft cannot propose tokens for a target, as llama.cpp's speculative
    example decides it (None when it can)."""
    if L.llama_vocab_type(draft) != L.llama_vocab_type(target):
        return "their tokenizers are of different types"
    if L.llama_vocab_get_add_bos(draft) != L.llama_vocab_get_add_bos(target):
        return "one adds a BOS token and the other does not"
    if L.llama_vocab_get_add_eos(draft) != L.llama_vocab_get_add_eos(target):
        return "one adds an EOS token and the other does not"
    for label, special in (("BOS", L.llama_vocab_bos), ("EOS", L.llama_vocab_eos)):
        if special(draft) != special(target):
            return f"their {label} tokens differ ({special(draft)} and {special(target)})"
    n_draft, n_target = L.llama_vocab_n_tokens(draft), L.llama_vocab_n_tokens(target)
    if abs(n_draft - n_target) > _VOCAB_MAX_SIZE_DIFFERENCE:
        return f"their vocabularies have {n_draft} and {n_target} tokens, more than {_VOCAB_MAX_SIZE_DIFFERENCE} apart"
    for token in range(_VOCAB_CHECK_START_TOKEN_ID, min(n_draft, n_target)):
        a, b = L.llama_vocab_get_text(draft, token), L.llama_vocab_get_text(target, token)
        if a != b:
            a_text, b_text = a.decode("utf-8", "replace"), b.decode("utf-8", "replace")
            return f"token {token} is {a_text!r} in one and {b_text!r} in the other"
    return None


def check_shared_vocab(draft: LlamaModel, target: LlamaModel) -> None:
    """Raise VocabularyMismatch unless the draft's tokens mean the same to the target;
    then make the draft sample only ids the target has."""
    problem = _vocab_problem(draft._vocab, target._vocab)
    if problem:
        raise VocabularyMismatch(
            f"the draft {draft.name} cannot propose tokens for the target {target.name}: {problem}; "
            "pick a draft of the target's model family."
        )
    draft._sample_limit = min(draft.n_vocab, target.n_vocab)


def check_vocab_files(draft_path: str | Path, target_path: str | Path) -> None:
    """check_shared_vocab on two GGUF files, loading their vocabularies only."""
    models = []
    try:
        for path in (Path(draft_path), Path(target_path)):
            models.append(N.load_model(path, n_gpu_layers=0, vocab_only=True))
        problem = _vocab_problem(L.llama_model_get_vocab(models[0]), L.llama_model_get_vocab(models[1]))
    finally:
        for model in models:
            L.llama_model_free(model)
    if problem:
        raise VocabularyMismatch(
            f"the draft {Path(draft_path).name} cannot propose tokens for the target {Path(target_path).name}: "
            f"{problem}; pick a draft of the target's model family."
        )
