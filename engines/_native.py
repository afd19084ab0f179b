"""The thin layer over llama-cpp-python's ctypes bindings.

- llama.cpp's log goes to the Python logger "llama.cpp" with the right levels
  (llama-cpp-python 0.3.36's own table is stale: it hides errors and prints
  warnings), and is silent unless the application configures logging.
- GGUF files are checked in Python (magic, header, size) before llama.cpp sees
  them, so a bad file is a `ModelLoadError`, never a crash.
- `NativeBatch` is a `llama_batch` whose arrays are numpy buffers, with any
  number of sequence ids per row (rows shared by identical histories).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import struct
import threading
from collections import deque
from pathlib import Path
from typing import Any, cast

import gguf
import llama_cpp as L
import numpy as np

from engines.base import ModelLoadError
from engines.gguf_info import MAGIC, _HeaderParser

logger = logging.getLogger("llama.cpp")
logger.addHandler(logging.NullHandler())  # quiet unless the application adds handlers

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.INFO]
# Recent error lines, so that a failed load can say what llama.cpp objected to.
_recent_errors: deque[str] = deque(maxlen=8)


@L.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    py_level = _last_level[0] if level == 5 else _LEVELS.get(level, logging.INFO)
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


def _tensor_bytes(type_id: int, dims: tuple[int, ...]) -> int | None:
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return None  # a type this gguf package does not know: llama.cpp will judge
    n = 1
    for d in dims:
        n *= d
    return n // block * type_size


def _needed_size(buf: mmap.mmap) -> int:
    """Bytes the file must have for its header's tensors to fit."""
    parser = _HeaderParser(buf)
    header = parser.parse()  # the metadata, with engines.gguf_info's reader
    alignment = header.metadata.get("general.alignment", 32)
    offset, endian, end = parser.pos, parser.endian, 0
    for _ in range(header.n_tensors):
        (name_length,) = struct.unpack_from(endian + "Q", buf, offset)
        offset += 8 + name_length
        (n_dims,) = struct.unpack_from(endian + "I", buf, offset)
        if n_dims > 8:
            raise ValueError(f"a tensor has {n_dims} dimensions")
        dims = struct.unpack_from(f"{endian}{n_dims}Q", buf, offset + 4)
        type_id, data_offset = struct.unpack_from(endian + "IQ", buf, offset + 4 + 8 * n_dims)
        offset += 4 + 8 * n_dims + 12
        nbytes = _tensor_bytes(type_id, dims)
        if nbytes is not None:
            end = max(end, data_offset + nbytes)
    return (offset + alignment - 1) // alignment * alignment + end


def check_gguf_file(path: Path) -> None:
    """Raise ModelLoadError (one sentence) unless `path` looks like a whole GGUF file."""
    if not path.exists():
        raise ModelLoadError(f"cannot load {path}: the file does not exist.")
    if not path.is_file():
        raise ModelLoadError(f"cannot load {path}: it is not a regular file.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if head != MAGIC:
            raise ModelLoadError(f"cannot load {path}: it is not a GGUF file (it starts with {head!r}, not {MAGIC!r}).")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                need = _needed_size(buf)
        except (struct.error, ValueError, UnicodeDecodeError):
            raise ModelLoadError(
                f"cannot load {path}: the file is truncated or damaged inside its header ({size} bytes); "
                "download it again."
            ) from None
    if need > size:
        raise ModelLoadError(
            f"cannot load {path}: the file is truncated ({size} bytes, its tensors need {need}); download it again."
        )


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
