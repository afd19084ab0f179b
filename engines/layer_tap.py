"""One layer's hidden states from the decodes a context already makes.

llama.cpp returns only the final hidden state (its embeddings, the input of
the output layer after the last norm). A value head may read better off a
middle layer: on the development target (a 28-layer 1.5B), probes on the
output of layers 16-18 rank steps best, above the final state's. The one way to a
middle layer through llama.cpp's public API is its eval callback
(`cb_eval`), which the graph scheduler asks before every node whether the
caller wants that node's result: the tap says yes only for the layer's output
(`l_out-N`, the residual stream after layer N, every row of the batch) and
copies it once computed.

The callback is set when the context is made (llama.cpp has no call to
change it later) and is asked about every node of every decode of that
context (about 960 for the 28-layer 1.5B), so it returns at once while not
armed: `scripts/bench_engine.py --layer N` measures what that costs. On a GPU
the scheduler also waits for the device after the tapped layer.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import llama_cpp as L
import numpy as np

from engines import _ggml
from engines.base import EngineError


class LayerTap:
    """The output of layer `layer` (0-based) of one context, `width` floats a row."""

    def __init__(self, layer: int, width: int, model_name: str) -> None:
        if layer < 0:
            raise ValueError(f"a layer index is 0 or more, not {layer}")
        self.layer = layer
        self.width = width
        self._model_name = model_name
        self._tensor_name = f"l_out-{layer}".encode()
        self._lib: Any = _ggml.load()
        self._armed = False
        self._rows: list[np.ndarray] = []
        self._error: str | None = None
        # Kept alive as long as the context that may call it.
        self.callback = L.ggml_backend_sched_eval_callback(self._eval)

    def _eval(self, tensor: int, ask: bool, _data: ctypes.c_void_p) -> bool:
        if not self._armed:
            return not ask  # want nothing; never stop a computation
        if ask:
            return bool(self._lib.ggml_get_name(tensor) == self._tensor_name)
        # An exception here would be printed and lost inside llama.cpp: keep it.
        try:
            n = int(self._lib.ggml_nelements(tensor))
            size = int(self._lib.ggml_nbytes(tensor))
            if size != 4 * n or n % self.width or not self._lib.ggml_is_contiguous(tensor):
                self._error = f"{self._tensor_name.decode()} is not a float32 matrix {self.width} wide"
                return True
            rows = np.empty((n // self.width, self.width), np.float32)
            self._lib.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, size)
            self._rows.append(rows)
        except Exception as e:  # reported by take()
            self._error = str(e)
        return True

    @contextmanager
    def armed(self) -> Iterator[None]:
        """A `with` block around decodes whose rows `take` returns."""
        self._rows, self._error, self._armed = [], None, True
        try:
            yield
        finally:
            self._armed = False

    def take(self, n_rows: int) -> np.ndarray:
        """The layer's rows of the decodes since the last take: `n_rows` of them,
        in batch order, or EngineError (one sentence) when llama.cpp gave other."""
        rows, self._rows = self._rows, []
        if self._error is not None:
            raise EngineError(f"cannot read layer {self.layer} of {self._model_name}: {self._error}.")
        if not rows:
            raise EngineError(
                f"llama.cpp's graph for {self._model_name} has no output of layer {self.layer} "
                f"({self._tensor_name.decode()}); use a value head trained on the final layer."
            )
        states = np.concatenate(rows) if len(rows) > 1 else rows[0]
        if len(states) != n_rows:
            raise EngineError(
                f"layer {self.layer} of {self._model_name} gave {len(states)} rows for a decode of {n_rows}."
            )
        return states
