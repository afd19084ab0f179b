"""The thin layer over llama-cpp-python's ctypes bindings.

- llama.cpp's log goes to the Python logger "llama.cpp" with the right levels
  (llama-cpp-python 0.3.36's own table is stale: it hides errors and prints
  warnings), and is silent unless the application configures logging.
- GGUF files are checked in Python (magic, header, size) before llama.cpp sees
  them, so a bad file is a `ModelLoadError`, never a crash.
- `NativeContext` is the one kind of context the engine uses: a unified KV
  cache shared by a pool of sequences, and every llama.cpp call on it.
- `NativeBatch` is a `llama_batch` whose arrays are numpy buffers, with any
  number of sequence ids per row (rows shared by identical histories).
- A long decode (a prompt, a teacher-forced chunk, a catch-up) stops inside
  llama.cpp when the caller's `should_stop` turns true (`DecodeAbort`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, cast

import llama_cpp as L
import numpy as np

from engines.base import Cancelled, ContextFullError, EngineError, ModelLoadError, ModelUsage
from engines.gguf_info import MAGIC, DamagedGGUF, read_header
from engines.layer_tap import LayerTap
from engines.rows import Rows, chunks

logger = logging.getLogger("llama.cpp")
logger.addHandler(logging.NullHandler())  # quiet unless the application adds handlers

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.INFO]
# Recent error lines, so that a failed load can say what llama.cpp objected to.
_recent_errors: deque[str] = deque(maxlen=8)
# Set on a thread while its decode winds down after being told to stop: what
# llama.cpp then says ("failed to compute graph", "removing memory module
# entries") is expected, not an error to show the user.
_stopping = threading.local()


@L.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    py_level = _last_level[0] if level == 5 else _LEVELS.get(level, logging.INFO)
    if getattr(_stopping, "active", False):
        py_level = min(py_level, logging.DEBUG)
    _last_level[0] = py_level
    message = text.decode("utf-8", "replace").rstrip("\n")
    if not message:
        return
    if py_level >= logging.ERROR:
        _recent_errors.append(message.strip())
    if logger.isEnabledFor(py_level):
        logger.log(py_level, message)


L.llama_log_set(_log_callback, ctypes.c_void_p(0))
L.llama_backend_init()


def clear_errors() -> None:
    _recent_errors.clear()


def first_error() -> str:
    """llama.cpp's first error line since `clear_errors`, without its function
    prefix (later lines tend to repeat it less precisely), for a one-sentence message."""
    for line in _recent_errors:
        text = line.split(": ", 1)[-1].strip().rstrip(".")
        text = text.removeprefix("error loading model: ")
        if text:
            return text
    return "no reason given"


# --- GGUF file checks -------------------------------------------------------


def check_gguf_file(path: Path) -> None:
    """Raise ModelLoadError (one sentence) unless `path` looks like a whole GGUF file:
    llama.cpp aborts the process on some damaged headers, and reads past a cut file."""
    if not path.exists():
        raise ModelLoadError(f"cannot load {path}: the file does not exist.")
    if not path.is_file():
        raise ModelLoadError(f"cannot load {path}: it is not a regular file.")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ModelLoadError(f"cannot load {path}: it is not a GGUF file (it starts with {head!r}, not {MAGIC!r}).")
    try:
        read_header(path)
    except DamagedGGUF as exc:
        raise ModelLoadError(f"cannot load {path}: the file {exc.reason}; download it again.") from None


# --- loading ------------------------------------------------------------------


class _StopOnInterrupt:
    """A load that Ctrl-C can stop: llama.cpp calls the progress callback between
    tensors, Python runs a signal handler only when Python code runs, so during
    the load SIGINT sets a flag and the callback answers "stop" (a 7B model read
    from a cold disk takes minutes; without this Ctrl-C waits for all of it)."""

    def __init__(self) -> None:
        self.interrupted = False
        self.callback = L.llama_progress_callback(lambda progress, user_data: not self.interrupted)
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupted = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def load_model(path: Path, *, n_gpu_layers: int, vocab_only: bool) -> L.llama_model_p:
    """llama_model_load_from_file behind the Python checks; ModelLoadError on failure,
    KeyboardInterrupt when Ctrl-C stopped it."""
    check_gguf_file(path)
    params = L.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.vocab_only = vocab_only
    clear_errors()
    with _StopOnInterrupt() as stop:
        params.progress_callback = stop.callback
        model = L.llama_model_load_from_file(os.fsencode(path), params)
    if stop.interrupted:
        if model:
            L.llama_model_free(model)
        raise KeyboardInterrupt
    if not model:
        raise ModelLoadError(f"cannot load {path}: llama.cpp says: {first_error()}.")
    return model


FLASH_ATTN = {
    "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
DEFAULT_N_CTX = 4096


def _free(ctx: object, model: object) -> None:
    if ctx:
        L.llama_free(ctx)
    if model:
        L.llama_model_free(model)


class Decoded(NamedTuple):
    """The output rows of one decode: their indices among the rows asked for, and
    their logits (llama.cpp's own buffer, overwritten by the next decode). Row i
    is row i - start of the decode's batch (llama.cpp's `_ith` getters count so)."""

    rows: np.ndarray
    logits: np.ndarray
    start: int
    # Final hidden states of the same rows (llama.cpp's buffer too), when asked for.
    hidden: np.ndarray | None = None


# Decodes of at least this many rows are stoppable inside llama.cpp. ggml's CPU
# backend asks the abort callback after every graph node (about 500 per decode
# of a 24-layer qwen2), each ask a ctypes call into Python that takes the GIL:
# 0.6-1 ms per decode on an idle 0.5B, 2-3% of a one-row decode, under 1% from
# a few rows on (more while another thread keeps the GIL busy). Fewer rows
# finish quickly and are checked between decodes.
ABORTABLE_ROWS = 8


class DecodeAbort:
    """llama.cpp's abort callback for one context, armed for one decode at a time.

    Armed, `should_stop` is asked after every graph node the CPU backend
    computes (Metal asks between command buffers). The CUDA backend never
    asks: with every layer offloaded only the CPU's part of the graph (the
    token-embedding lookup at its start) checks, so a GPU decode that has
    begun runs to its end. The callback is installed only while armed, so
    other decodes pay nothing. An aborted decode returns 2, after llama.cpp
    dropped the cells it wrote for the first sequence id of each row; callers
    restore the rest (`LlamaModel` forgets every position a cancelled call
    decoded, for every sequence id).

    On the main thread the callback is where Python runs signal handlers
    during a decode, and an exception raised on entering a ctypes callback
    is printed and lost (the decode goes on or stops at random). So while
    armed there, Ctrl-C only stops the decode, and once it has returned the
    program's own SIGINT handler runs, as if Ctrl-C came then (a search's
    "stop and keep what you found", or KeyboardInterrupt)."""

    def __init__(self, ctx: L.llama_context_p) -> None:
        self._ctx = ctx
        self._should_stop: Callable[[], bool] | None = None
        self._error: BaseException | None = None
        self._interrupted = False
        self._sigint: Any = None  # the program's handler, while this one stands in
        self._callback = L.ggml_abort_callback(self._ask)  # alive as long as llama.cpp may call it

    def _ask(self, _data: ctypes.c_void_p) -> bool:
        try:
            stop = self._interrupted or (self._should_stop is not None and bool(self._should_stop()))
        except BaseException as e:  # raised again on return from the decode
            self._error, stop = e, True
        if stop:
            _stopping.active = True
        return stop

    def _interrupt(self, signum: int, frame: Any) -> None:
        self._interrupted = True

    def armed(self, should_stop: Callable[[], bool] | None) -> AbstractContextManager[object]:
        """A `with` block around one llama_decode that stops it when `should_stop`
        says so (nothing happens with None)."""
        if should_stop is None:
            return _NOT_ARMED
        self._should_stop, self._error, self._interrupted = should_stop, None, False
        return self

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread() and callable(signal.getsignal(signal.SIGINT)):
            self._sigint = signal.signal(signal.SIGINT, self._interrupt)
        L.llama_set_abort_callback(self._ctx, self._callback, None)

    def __exit__(self, *exc: object) -> None:
        L.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
        self._should_stop = None
        _stopping.active = False
        if self._sigint is not None:
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None
            if self._interrupted:
                signal.raise_signal(signal.SIGINT)

    def raised(self) -> BaseException:
        """What an aborted decode raises: `should_stop`'s own error, else `Cancelled`
        (also when Ctrl-C stopped it and the program's handler raised nothing)."""
        return self._error if self._error is not None else Cancelled()


_NO_ABORT = L.ggml_abort_callback()  # a NULL function pointer
_NOT_ARMED = nullcontext()


class NativeContext:
    """One loaded GGUF and one llama.cpp context whose `n_seq_max` sequences share
    a unified KV cache (so a fork shares its prefix's cells instead of copying
    them, and one batch row may carry several sequence ids). Every call the
    engine makes into llama.cpp about a model goes through here."""

    def __init__(
        self,
        path: Path,
        name: str,
        *,
        n_ctx: int | None,
        n_seq_max: int,
        n_batch: int,
        n_gpu_layers: int | None,
        n_threads: int | None,
        flash_attn: str | bool,
        hidden_layer: int | None = None,
    ) -> None:
        """`hidden_layer`: hidden states come from that layer's output (0-based)
        instead of the final state."""
        max_seqs = L.llama_max_parallel_sequences()
        if not 1 <= n_seq_max <= max_seqs:
            raise ValueError(f"n_seq_max must be between 1 and {max_seqs}, not {n_seq_max}")
        if n_batch < 1:
            raise ValueError(f"n_batch must be at least 1, not {n_batch}")
        if n_ctx is not None and n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, not {n_ctx}")
        if isinstance(flash_attn, bool):
            flash_attn = "on" if flash_attn else "off"
        if flash_attn not in FLASH_ATTN:
            raise ValueError(f"flash_attn must be one of {sorted(FLASH_ATTN)} or a bool, not {flash_attn!r}")
        self.name = name
        self.gpu_layers = (-1 if L.llama_supports_gpu_offload() else 0) if n_gpu_layers is None else n_gpu_layers
        self.model = load_model(path, n_gpu_layers=self.gpu_layers, vocab_only=False)
        self.n_ctx_train: int = L.llama_model_n_ctx_train(self.model)
        self.n_ctx = min(n_ctx or DEFAULT_N_CTX, self.n_ctx_train)
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.n_threads = n_threads or default_threads()
        params = L.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        # llama.cpp reserves an output row per sequence up front and aborts if
        # that exceeds n_outputs_max (which defaults to n_batch).
        params.n_outputs_max = max(n_batch, n_seq_max)
        params.kv_unified = True
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.no_perf = True
        self._tap: LayerTap | None = None
        if hidden_layer is not None:
            n_layer = L.llama_model_n_layer(self.model)
            if not 0 <= hidden_layer < n_layer:
                L.llama_model_free(self.model)
                raise ModelLoadError(
                    f"{name} has layers 0 to {n_layer - 1}, so its hidden states cannot come from layer {hidden_layer}."
                )
            self._tap = LayerTap(hidden_layer, L.llama_model_n_embd(self.model), name)
            params.cb_eval = self._tap.callback
        clear_errors()
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise ModelLoadError(
                f"cannot create a {self.n_ctx}-token context for {path}: llama.cpp says: {first_error()}."
            )
        self._finalizer = weakref.finalize(self, _free, self.ctx, self.model)
        self._abort = DecodeAbort(self.ctx)
        self.memory = L.llama_get_memory(self.ctx)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab: int = L.llama_vocab_n_tokens(self.vocab)
        # The width of a hidden-state row (the input of the output layer, or the tapped layer's output).
        self.n_embd: int = self._tap.width if self._tap else L.llama_model_n_embd_out(self.model)
        self._batch = NativeBatch(n_batch)
        # Output rows per decode: llama.cpp keeps a logits buffer as large as the
        # most rows ever asked for at once (n_vocab floats each), so cap it.
        self.max_outputs = max(n_seq_max, min(n_batch, 64))

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the context and the weights (closing twice is harmless)."""
        self._finalizer()

    @property
    def chat_template(self) -> str | None:
        template = L.llama_model_chat_template(self.model, None)
        return template.decode("utf-8", "replace") if template else None

    @property
    def kv_cache_bytes(self) -> int:
        """Size of the f16 KV cache of the whole context."""
        n_head = L.llama_model_n_head(self.model)
        head_dim = L.llama_model_n_embd(self.model) // max(1, n_head)
        kv_width = L.llama_model_n_head_kv(self.model) * head_dim
        return L.llama_model_n_layer(self.model) * L.llama_n_ctx(self.ctx) * 2 * kv_width * 2

    def decode_rows(
        self,
        rows: Rows,
        usage: ModelUsage,
        *,
        prefill: bool,
        consume: Callable[[Decoded], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        hidden: bool = False,
    ) -> None:
        """Decode `rows` in chunks of at most n_batch rows (and `max_outputs` output
        rows); `consume` sees each chunk's output rows before the next chunk.

        With `hidden`, the decode also returns each row's hidden state: the
        final one (llama.cpp's embeddings with pooling NONE: the input of the
        output layer), or the tapped layer's output. llama.cpp makes every row
        of the batch an output for embeddings, so with `hidden` every row is
        treated as one here (they are chunked by `max_outputs`)."""
        tokens = np.asarray(rows.tokens, np.int32)
        positions = np.asarray(rows.positions, np.int32)
        counts = np.fromiter(map(len, rows.seq_ids), np.int32, len(rows.seq_ids))
        ids = np.fromiter(chain.from_iterable(rows.seq_ids), np.int32)
        outputs = np.ones(len(tokens), np.int8) if hidden else np.asarray(rows.outputs, np.int8)
        id_starts = np.cumsum(counts) - counts
        embeddings = hidden and self._tap is None
        if embeddings:
            L.llama_set_embeddings(self.ctx, True)
        try:
            with self._tap.armed() if hidden and self._tap else nullcontext():
                self._decode_chunks(
                    tokens, positions, counts, ids, outputs, id_starts, usage, prefill, consume, should_stop, hidden
                )
        finally:
            if embeddings:
                L.llama_set_embeddings(self.ctx, False)

    def _decode_chunks(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        counts: np.ndarray,
        ids: np.ndarray,
        outputs: np.ndarray,
        id_starts: np.ndarray,
        usage: ModelUsage,
        prefill: bool,
        consume: Callable[[Decoded], None] | None,
        should_stop: Callable[[], bool] | None,
        hidden: bool,
    ) -> None:
        for start, end, out_rows in chunks(outputs, self.n_batch, self.max_outputs):
            if should_stop is not None and should_stop():
                raise Cancelled()
            id_end = int(id_starts[end - 1] + counts[end - 1])
            batch = self._batch.fill(
                tokens[start:end],
                positions[start:end],
                counts[start:end],
                ids[int(id_starts[start]) : id_end],
                outputs[start:end],
            )
            # Only prefills stop inside a decode: sampling decodes are short and
            # checked between them, and a backend sampler's chain is left alone.
            stop = should_stop if prefill and end - start >= ABORTABLE_ROWS else None
            clear_errors()
            with NativeTime(usage), self._abort.armed(stop):
                rc = L.llama_decode(self.ctx, batch)
            if rc == 2 and stop is not None:
                raise self._abort.raised()
            if rc != 0:
                raise self._decode_error(rc, end - start)
            usage.decoded_rows += end - start
            if prefill:
                usage.prefilled += end - start
            if consume is not None and len(out_rows):
                logits = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(out_rows), self.n_vocab))
                states = None
                if hidden and self._tap is not None:
                    states = self._tap.take(end - start)[out_rows - start]
                elif hidden:
                    pointer = L.llama_get_embeddings(self.ctx)
                    if not pointer:
                        raise EngineError(f"llama.cpp returned no hidden states for {self.name}.")
                    states = np.ctypeslib.as_array(pointer, shape=(len(out_rows), self.n_embd))
                consume(Decoded(out_rows, logits, start, states))

    def _decode_error(self, rc: int, n_rows: int) -> EngineError:
        if rc == 1:
            return ContextFullError(
                f"the KV cache of {self.name} ({self.n_ctx} cells) has no room for {n_rows} more tokens "
                "next to the live sequences; release sequences or raise the context size."
            )
        return EngineError(f"llama.cpp could not decode a batch for {self.name} (code {rc}): {first_error()}.")

    def copy_sequence(self, source: int, target: int) -> None:
        """Make `target` hold every cell of `source` (shared, not copied)."""
        L.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def remove(self, seq_id: int, start: int = -1) -> bool:
        """Drop a sequence's cells from position `start` on (all of them by default)."""
        return bool(L.llama_memory_seq_rm(self.memory, seq_id, start, -1))


class NativeTime:
    """Adds the time spent in llama.cpp to a usage record."""

    __slots__ = ("t0", "usage")

    def __init__(self, usage: ModelUsage):
        self.usage = usage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.usage.native_seconds += time.perf_counter() - self.t0


def default_threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


# --- batches --------------------------------------------------------------------

_P_TOKEN = ctypes.POINTER(L.llama_token)
_P_SEQ = ctypes.POINTER(L.llama_seq_id)


class NativeBatch:
    """A llama_batch over numpy arrays; each row may carry several sequence ids."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq_id = np.zeros(capacity, np.int32)
        self.seq_ptr = np.zeros(capacity, np.uint64)  # row i -> address of its ids in `ids`
        self.output = np.zeros(capacity, np.int8)
        self.ids = np.zeros(capacity, np.int32)
        # llama-cpp-python types these fields as arrays; they are pointers.
        struct = cast(Any, L.llama_batch())
        struct.token = self.token.ctypes.data_as(_P_TOKEN)
        struct.embd = None
        struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(L.llama_pos))
        struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        struct.seq_id = ctypes.cast(self.seq_ptr.ctypes.data, ctypes.POINTER(_P_SEQ))
        struct.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct = struct

    def fill(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        counts: np.ndarray,
        ids: np.ndarray,
        outputs: np.ndarray,
    ) -> L.llama_batch:
        """Rows i get `counts[i]` consecutive sequence ids from the flat `ids`."""
        n = len(tokens)
        if n > self.capacity:
            raise ValueError(f"{n} rows exceed the batch capacity {self.capacity}")
        if len(ids) > len(self.ids):
            self.ids = np.zeros(max(len(ids), 2 * len(self.ids)), np.int32)
        self.token[:n] = tokens
        self.pos[:n] = positions
        self.n_seq_id[:n] = counts
        self.output[:n] = outputs
        self.ids[: len(ids)] = ids
        starts = np.cumsum(counts) - counts
        self.seq_ptr[:n] = self.ids.ctypes.data + 4 * starts.astype(np.uint64)
        self.struct.n_tokens = n
        return self.struct
