"""The few ggml functions a backend sampler written in Python and a layer tap need.

llama-cpp-python ships ggml's shared libraries next to libllama but binds
none of the graph-building API, so these come from its ggml-base library
through ctypes. Tensors, contexts and graphs are opaque pointers (ints).
`load()` raises OSError when the library or a symbol is missing (an older
or differently built llama-cpp-python).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as L
from llama_cpp._ctypes_extensions import load_shared_library

TYPE_F32 = L.GGML_TYPE_F32
TYPE_I32 = L.GGML_TYPE_I32

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F = ctypes.c_float

# name: (argument types, result type); every tensor-making function takes the
# ggml context first.
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "ggml_nelements": ([_P], _I64),
    "ggml_new_tensor_1d": ([_P, ctypes.c_int, _I64], _P),
    "ggml_view_1d": ([_P, _P, _I64, ctypes.c_size_t], _P),
    "ggml_reshape_1d": ([_P, _P, _I64], _P),
    "ggml_reshape_2d": ([_P, _P, _I64, _I64], _P),
    "ggml_repeat_4d": ([_P, _P, _I64, _I64, _I64, _I64], _P),
    "ggml_argmax": ([_P, _P], _P),
    "ggml_get_rows": ([_P, _P, _P], _P),
    "ggml_add": ([_P, _P, _P], _P),
    "ggml_sub": ([_P, _P, _P], _P),
    "ggml_mul": ([_P, _P, _P], _P),
    "ggml_exp": ([_P, _P], _P),
    "ggml_log": ([_P, _P], _P),
    "ggml_sum": ([_P, _P], _P),
    "ggml_sum_rows": ([_P, _P], _P),
    "ggml_soft_max": ([_P, _P], _P),
    "ggml_cumsum": ([_P, _P], _P),
    "ggml_step": ([_P, _P], _P),
    "ggml_scale_bias": ([_P, _P, _F, _F], _P),
    "ggml_clamp": ([_P, _P, _F, _F], _P),
    "ggml_cast": ([_P, _P, ctypes.c_int], _P),
    "ggml_set_input": ([_P], None),
    "ggml_set_name": ([_P, ctypes.c_char_p], _P),
    "ggml_backend_tensor_set": ([_P, _P, ctypes.c_size_t, ctypes.c_size_t], None),
    # Checking that a device runs every op of a sampler graph:
    "ggml_tensor_overhead": ([], ctypes.c_size_t),
    "ggml_graph_overhead": ([], ctypes.c_size_t),
    "ggml_free": ([_P], None),
    "ggml_new_graph": ([_P], _P),
    "ggml_build_forward_expand": ([_P, _P], None),
    "ggml_graph_n_nodes": ([_P], ctypes.c_int),
    "ggml_graph_node": ([_P, ctypes.c_int], _P),
    "ggml_backend_buft_get_device": ([_P], _P),
    "ggml_backend_dev_supports_op": ([_P, _P], ctypes.c_bool),
    "ggml_backend_dev_name": ([_P], ctypes.c_char_p),
    "ggml_op_desc": ([_P], ctypes.c_char_p),
    # Reading a layer's output in llama.cpp's eval callback (engines.layer_tap):
    "ggml_get_name": ([_P], ctypes.c_char_p),
    "ggml_nbytes": ([_P], ctypes.c_size_t),
    "ggml_is_contiguous": ([_P], ctypes.c_bool),
    "ggml_backend_tensor_get": ([_P, _P, ctypes.c_size_t, ctypes.c_size_t], None),
}


class InitParams(ctypes.Structure):
    """struct ggml_init_params (passed by value to ggml_init)."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", _P), ("no_alloc", ctypes.c_bool)]


_lib: Any = None


def load() -> Any:
    """The ggml-base library with the signatures above set (loaded once)."""
    global _lib
    if _lib is None:
        lib = load_shared_library("ggml-base", L.llama_cpp._base_path)
        for name, (argtypes, restype) in _SIGNATURES.items():
            try:
                function = getattr(lib, name)
            except AttributeError:
                raise OSError(f"the ggml library of llama-cpp-python lacks {name}") from None
            function.argtypes = argtypes
            function.restype = restype
        lib.ggml_init.argtypes = [InitParams]
        lib.ggml_init.restype = _P
        _lib = lib
    return _lib
