"""Step sampling inside llama.cpp's compute graph ("backend sampling").

While one `sample` call lasts, each candidate sequence has its own sampler chain

    specs-raw -> temp(T) -> top-p(p) -> specs-draw

attached with `llama_set_sampler`. `temp` and `top-p` are llama.cpp's own
backend samplers. The two others are written here, in Python, as ggml graph
operations (a `llama_sampler_i` whose `backend_apply` adds ops to the graph):

- specs-raw keeps the row's untempered logits, cut to the ids this model may
  sample, for the log-probability;
- specs-draw takes the place of llama.cpp's `dist`. It draws one token for each
  candidate on the row by inverse CDF over what temp and top-p left, from
  uniforms the host supplies, and gathers each drawn token's log-probability
  at T=1 over the whole (cut) vocabulary: raw[token] - logsumexp(raw).

Why not `dist`: llama.cpp applies only the chain of a row's first sequence,
and `dist` draws one token per row from its own generator. A shared-history
row carries several candidates that each need their own draw. So the draws
come from the candidates' own seeded streams on the host, one uniform per
candidate and token, exactly as the numpy path draws them: both paths sample
the same distribution with the same random numbers, and they pick the same
token except where float32 and float64 rounding put a draw on either side of
a boundary.

What comes back per row is the drawn tokens and their log-probabilities
(`data->candidates` and `data->logits`, one int32 and one float32 per
candidate on the row); `data->probs` is cleared, so no vocabulary-wide row is
copied to the host.

llama.cpp rules this module lives with (vendored llama.cpp of 0.3.36):
- a chain can be attached once (its backend_init asserts otherwise), so the
  chains of one call are built, attached, detached and freed together;
- attaching or detaching makes the next decode re-reserve the scheduler;
- a sequence with a sampler may have one output row per decode
  (`n_outputs_max_per_seq`, 1 here), and its rows' raw logits are not copied
  back: candidates lose their chains before anything else decodes them.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import llama_cpp as L
import numpy as np

from engines import _ggml
from engines.base import EngineError

log = logging.getLogger(__name__)

# Uniforms are capped just below 1 so that u * total stays under the last
# cumulative value in float32; the draw then always lands on a token of
# positive probability. The cap moves at most 1e-6 of probability mass.
_UNIFORM_MAX = 1.0 - 2.0**-20
_PROBE_VOCAB = 4096
MODES = ("auto", "device", "host")
_LLAMA_SAMPLER_I_FIELDS = (
    "name",
    "accept",
    "apply",
    "reset",
    "clone",
    "free",
    "backend_init",
    "backend_accept",
    "backend_apply",
    "backend_set_input",
    "backend_reset",
    "copy_state",
)
_BINDINGS = (
    "llama_set_sampler",
    "llama_sampler_init",
    "llama_sampler_chain_get",
    "llama_get_sampled_candidates_ith",
    "llama_get_sampled_candidates_count_ith",
    "llama_get_sampled_logits_ith",
    "llama_get_sampled_logits_count_ith",
)


class SamplerChainRejected(EngineError):
    """llama.cpp refused to attach a sampler chain to a sequence."""


class BackendSamplingUnsupported(EngineError):
    """This build of llama.cpp cannot run the sampler chains on its device."""


def unavailable_reason() -> str | None:
    """Why this llama-cpp-python cannot sample in the graph (None when it can):
    bindings, the layout of llama_sampler_i as vendored llama.h declares it,
    and the ggml functions the Python samplers build graphs with."""
    missing = [name for name in _BINDINGS if not hasattr(L, name)]
    if missing:
        return f"llama-cpp-python {L.__version__} has no {missing[0]}"
    interface = getattr(L, "llama_sampler_i", None)
    fields = tuple(name for name, *_ in getattr(interface, "_fields_", ()))
    if fields != _LLAMA_SAMPLER_I_FIELDS:
        return f"llama-cpp-python {L.__version__} declares llama_sampler_i with other fields than this code expects"
    try:
        _ggml.load()
    except OSError as e:
        return str(e)
    return None


def use_device(mode: str, *, gpu_layers: int, name: str) -> bool:
    """Whether model `name` samples its steps in llama.cpp's graph.

    "host" and "device" choose; "auto" samples on the device when the model's
    layers are offloaded to a GPU, and on the host otherwise (on the CPU
    backend the numpy path is the faster one; the README has the numbers).
    When this llama-cpp-python cannot, the model samples on the host, said in
    one log line."""
    if mode not in MODES:
        raise ValueError(f"sampling must be one of {', '.join(MODES)}, not {mode!r}")
    offloaded = gpu_layers != 0 and L.llama_supports_gpu_offload()
    if mode == "host" or (mode == "auto" and not offloaded):
        return False
    reason = unavailable_reason()
    if reason is not None:
        log.warning("%s samples on the host: %s.", name, reason)
        return False
    return True


# --- the Python samplers ------------------------------------------------------------


class _Chain:
    """Python side of one candidate's chain: what specs-raw hands to specs-draw
    while a graph is built, and the draws the host asked for."""

    __slots__ = ("attached", "draws", "error", "init_ok", "limit", "pending", "raw", "seq_id", "uniforms")

    def __init__(self, seq_id: int, limit: int, draws: int) -> None:
        self.seq_id = seq_id
        self.limit = limit  # ids >= limit are never sampled (a target lacks them)
        self.draws = draws  # tokens drawn per row: the most candidates a row can carry
        self.raw: int | None = None  # the cut untempered logits of the row being built
        self.uniforms: int | None = None  # the graph's input tensor of uniforms
        self.pending: np.ndarray | None = None  # uniforms for the next decode
        self.init_ok = False
        self.attached = False
        self.error: str | None = None


_chains: dict[int, _Chain] = {}
_keys = itertools.count(1)
_devices_checked: dict[int, str | None] = {}  # device pointer -> unsupported op (None: all run)


def _chain(smpl: Any) -> _Chain:
    return _chains[smpl.contents.ctx]


def _raw_ops(g: Any, ctx: int, data: Any, chain: _Chain) -> None:
    logits = data.logits
    n = g.ggml_nelements(logits)
    raw = g.ggml_view_1d(ctx, logits, min(n, chain.limit), 0) if chain.limit < n else logits
    chain.raw = raw
    data.logits = raw


def _draw_ops(g: Any, ctx: int, data: Any, chain: _Chain) -> None:
    """Inverse-CDF draws over data->logits (tempered, maybe sorted by top-p, whose
    candidates then map positions to ids) and the T=1 log-probability of each."""
    raw = chain.raw
    if raw is None:
        raise AssertionError("specs-draw ran without specs-raw before it")
    n_raw = g.ggml_nelements(raw)
    n = g.ggml_nelements(data.logits)
    m = chain.draws
    logits = g.ggml_reshape_1d(ctx, data.logits, n)
    cdf = g.ggml_cumsum(ctx, g.ggml_soft_max(ctx, logits))
    total = g.ggml_view_1d(ctx, cdf, 1, (n - 1) * 4)
    uniforms = g.ggml_new_tensor_1d(ctx, _ggml.TYPE_F32, m)
    g.ggml_set_name(uniforms, b"specs_draw_uniforms")
    g.ggml_set_input(uniforms)
    chain.uniforms = uniforms
    targets = g.ggml_reshape_2d(ctx, g.ggml_mul(ctx, uniforms, total), 1, m)
    column = g.ggml_reshape_2d(ctx, cdf, n, 1)
    grid = g.ggml_repeat_4d(ctx, column, n, m, 1, 1) if m > 1 else column
    # Per draw, the number of positions whose cumulative mass exceeds the
    # target; the drawn position is n minus that (the first one exceeding it).
    above = g.ggml_sum_rows(ctx, g.ggml_step(ctx, g.ggml_sub(ctx, grid, targets)))
    position = g.ggml_clamp(ctx, g.ggml_scale_bias(ctx, above, -1.0, float(n)), 0.0, float(n - 1))
    position = g.ggml_reshape_1d(ctx, g.ggml_cast(ctx, position, _ggml.TYPE_I32), m)
    if data.candidates:
        ids = g.ggml_get_rows(ctx, g.ggml_reshape_2d(ctx, data.candidates, 1, n), position)
        tokens = g.ggml_reshape_1d(ctx, ids, m)
    else:
        tokens = position
    raw_rows = g.ggml_reshape_2d(ctx, raw, 1, n_raw)
    top = g.ggml_get_rows(ctx, raw_rows, g.ggml_argmax(ctx, g.ggml_reshape_2d(ctx, raw, n_raw, 1)))
    log_z = g.ggml_add(ctx, g.ggml_log(ctx, g.ggml_sum(ctx, g.ggml_exp(ctx, g.ggml_sub(ctx, raw, top)))), top)
    logprobs = g.ggml_reshape_1d(ctx, g.ggml_sub(ctx, g.ggml_get_rows(ctx, raw_rows, tokens), log_z), m)
    data.candidates = tokens
    data.logits = logprobs
    data.sampled = g.ggml_view_1d(ctx, tokens, 1, 0)
    data.probs = None


def _unsupported_op(device: int, chain: _Chain) -> str | None:
    """The first op of the two Python samplers that `device` cannot run (None if all run)."""
    if device in _devices_checked:
        return _devices_checked[device]
    g = _ggml.load()
    n_tensors = 256
    params = _ggml.InitParams(n_tensors * g.ggml_tensor_overhead() + g.ggml_graph_overhead(), None, True)
    ctx = g.ggml_init(params)
    if not ctx:
        raise MemoryError("ggml_init failed")
    try:
        probe = _Chain(chain.seq_id, _PROBE_VOCAB, chain.draws)
        data = L.llama_sampler_data()
        data.logits = g.ggml_new_tensor_1d(ctx, _ggml.TYPE_F32, _PROBE_VOCAB)
        data.candidates = g.ggml_new_tensor_1d(ctx, _ggml.TYPE_I32, _PROBE_VOCAB)
        _raw_ops(g, ctx, data, probe)
        _draw_ops(g, ctx, data, probe)
        graph = g.ggml_new_graph(ctx)
        for output in (data.logits, data.candidates, data.sampled):
            g.ggml_build_forward_expand(graph, output)
        missing = None
        for i in range(g.ggml_graph_n_nodes(graph)):
            node = g.ggml_graph_node(graph, i)
            if not g.ggml_backend_dev_supports_op(device, node):
                missing = g.ggml_op_desc(node).decode()
                break
    finally:
        g.ggml_free(ctx)
    _devices_checked[device] = missing
    return missing


def _guarded(build: Callable[[Any, int, Any, _Chain], None]) -> Callable[[Any, int, int, Any], None]:
    """A backend_apply callback around `build`; an exception cannot cross into
    llama.cpp, so it is kept on the chain for the host to raise after the decode."""

    def backend_apply(smpl: Any, ctx: int, _graph: int, data: Any) -> None:
        chain = _chain(smpl)
        # llama.cpp builds every attached chain into each graph, on a dummy row
        # when its sequence has no row there. A chain asked for no draws has
        # none, so it adds nothing (its graph would not be computed anyway);
        # until attached, it builds in full, so llama.cpp counts its nodes.
        if chain.attached and chain.pending is None:
            return
        try:
            build(_ggml.load(), ctx, data.contents, chain)
        except Exception as e:
            chain.error = f"{type(e).__name__}: {e}"

    return backend_apply


def _backend_init(smpl: Any, buft: int, n_outputs_max_per_seq: int) -> bool:
    chain = _chain(smpl)
    try:
        if n_outputs_max_per_seq != 1:
            chain.error = f"{n_outputs_max_per_seq} outputs per sequence (one draw set per row is supported)"
            return False
        device = _ggml.load().ggml_backend_buft_get_device(buft)
        missing = _unsupported_op(device, chain) if device else None
        if missing:
            name = _ggml.load().ggml_backend_dev_name(device).decode()
            chain.error = f"the device {name} cannot run the ggml op {missing}"
            return False
        chain.init_ok = True
        return True
    except Exception as e:
        chain.error = f"{type(e).__name__}: {e}"
        return False


def _set_input(smpl: Any) -> None:
    chain = _chain(smpl)
    if chain.pending is None or chain.uniforms is None:
        chain.error = f"a row of sequence {chain.seq_id} was sampled without draws asked for it"
        return
    values = chain.pending
    _ggml.load().ggml_backend_tensor_set(chain.uniforms, values.ctypes.data, 0, values.nbytes)
    chain.pending = None


def _reset(smpl: Any) -> None:
    chain = _chain(smpl)
    chain.raw = None
    chain.uniforms = None


_NAME_TYPE = ctypes.CFUNCTYPE(ctypes.c_void_p, L.llama_sampler_p_ctypes)


def _interface(name: bytes, apply: Callable[..., None], *, draws: bool) -> tuple[Any, list[Any]]:
    """A llama_sampler_i and the callback objects that must outlive it."""
    label = ctypes.create_string_buffer(name)
    callbacks: list[Any] = [
        label,
        _NAME_TYPE(lambda _smpl: ctypes.addressof(label)),
        L.llama_sampler_i_backend_init(_backend_init),
        L.llama_sampler_i_backend_apply(_guarded(apply)),
        L.llama_sampler_i_backend_reset(_reset),
    ]
    iface = L.llama_sampler_i()
    # The binding types `name` as returning c_char_p, which a Python callback
    # cannot return safely; the same C signature returns an address here.
    iface.name = ctypes.cast(callbacks[1], L.llama_sampler_i_name)
    iface.backend_init = callbacks[2]
    iface.backend_apply = callbacks[3]
    iface.backend_reset = callbacks[4]
    if draws:
        callbacks.append(L.llama_sampler_i_backend_set_input(_set_input))
        iface.backend_set_input = callbacks[-1]
    # accept, apply, clone, free stay NULL: these samplers run only in the
    # graph, never on the CPU sampling path, and their state is owned here.
    return iface, callbacks


_RAW_I, _raw_keep = _interface(b"specs-raw", _raw_ops, draws=False)
_DRAW_I, _draw_keep = _interface(b"specs-draw", _draw_ops, draws=True)


# --- chains for one sample call -------------------------------------------------------


class Drawn(NamedTuple):
    """What the device drew on one row: a token per candidate on it, and each
    token's log-probability at T=1."""

    tokens: list[int]
    logprobs: list[float]


class DeviceChains:
    """The sampler chains of one `sample` call, attached to its candidate sequences.

    Before a decode, `request(seq_ids, uniforms)` asks the row that carries
    `seq_ids` for one draw per uniform; after it, `take(i, seq_ids)` reads what
    batch row i drew. Leaving the context manager detaches and frees the chains.
    """

    def __init__(
        self,
        ctx: Any,
        seq_ids: Sequence[int],
        *,
        temperature: float,
        top_p: float,
        limit: int,
        draws: int,
    ) -> None:
        self._ctx = ctx
        self._draws = draws
        self._handles: list[Any] = []
        self._keys: list[int] = []
        self._attached: list[int] = []
        self._by_seq: dict[int, _Chain] = {}
        try:
            for seq_id in seq_ids:
                self._attach(seq_id, temperature, top_p, limit)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> DeviceChains:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attach(self, seq_id: int, temperature: float, top_p: float, limit: int) -> None:
        chain = _Chain(seq_id, limit, self._draws)
        key = next(_keys)
        _chains[key] = chain
        self._keys.append(key)
        params = L.llama_sampler_chain_default_params()
        params.no_perf = True
        handle = L.llama_sampler_chain_init(params)
        self._handles.append(handle)
        L.llama_sampler_chain_add(handle, L.llama_sampler_init(ctypes.byref(_RAW_I), ctypes.c_void_p(key)))
        L.llama_sampler_chain_add(handle, L.llama_sampler_init_temp(temperature))
        if temperature > 0 and top_p < 1:  # greedy ignores top-p, as the numpy path does
            L.llama_sampler_chain_add(handle, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(handle, L.llama_sampler_init(ctypes.byref(_DRAW_I), ctypes.c_void_p(key)))
        if not L.llama_set_sampler(self._ctx, seq_id, handle):
            raise SamplerChainRejected(
                f"llama.cpp rejected the sampler chain {describe(handle)} for sequence {seq_id}."
            )
        self._attached.append(seq_id)
        chain.attached = True
        self._by_seq[seq_id] = chain
        lacking = [name.lstrip("-") for name in _names(handle) if name.startswith("-")]
        if lacking or not chain.init_ok:
            reason = chain.error or f"its backend cannot run the sampler {lacking[0]}"
            raise BackendSamplingUnsupported(f"llama.cpp cannot sample in the graph here: {reason}.")

    def request(self, seq_ids: Sequence[int], uniforms: Sequence[float]) -> None:
        """One draw per candidate of the row that carries `seq_ids`, in the next
        decode, from these uniforms (none for greedy chains, which ignore them).

        llama.cpp runs the chain of the row's first sequence id, and it keeps a
        row's ids in an unordered set, so which one is first is not ours to
        choose: every chain on the row gets the uniforms, and one uses them."""
        if len(seq_ids) > self._draws or len(uniforms) > len(seq_ids):
            raise ValueError(f"{len(seq_ids)} candidates on a row of chains that draw {self._draws}")
        values = np.zeros(self._draws, np.float32)
        values[: len(uniforms)] = np.minimum(uniforms, _UNIFORM_MAX)
        for seq_id in seq_ids:
            self._by_seq[seq_id].pending = values

    def take(self, row: int, seq_ids: Sequence[int]) -> Drawn:
        """The tokens batch row `row` drew for the candidates `seq_ids` (as asked
        by `request`) and their log-probabilities at T=1."""
        group = [self._by_seq[seq_id] for seq_id in seq_ids]
        failed = next((chain for chain in group if chain.error is not None), None)
        if failed is not None:
            error, failed.error = failed.error, None
            raise EngineError(f"sampling in llama.cpp's graph failed for sequence {failed.seq_id}: {error}.")
        used = sum(chain.pending is None for chain in group)
        for chain in group:
            chain.pending = None
        if used != 1:
            raise EngineError(f"llama.cpp ran {used} sampler chains, not one, on the row of sequences {list(seq_ids)}.")
        n_tokens = L.llama_get_sampled_candidates_count_ith(self._ctx, row)
        n_logprobs = L.llama_get_sampled_logits_count_ith(self._ctx, row)
        if n_tokens != self._draws or n_logprobs != self._draws:
            raise EngineError(
                f"llama.cpp returned {n_tokens} tokens and {n_logprobs} log-probabilities for row {row}, "
                f"not the {self._draws} its sampler chain draws."
            )
        n = len(group)
        tokens = np.ctypeslib.as_array(L.llama_get_sampled_candidates_ith(self._ctx, row), shape=(n,))
        logprobs = np.ctypeslib.as_array(L.llama_get_sampled_logits_ith(self._ctx, row), shape=(n,))
        return Drawn(tokens.tolist(), logprobs.astype(np.float64).tolist())

    def close(self) -> None:
        for seq_id in self._attached:
            L.llama_set_sampler(self._ctx, seq_id, None)
        for handle in self._handles:
            L.llama_sampler_free(handle)
        for key in self._keys:
            _chains.pop(key, None)
        self._attached, self._handles, self._keys = [], [], []
        self._by_seq.clear()


def _names(handle: Any) -> list[str]:
    return [
        L.llama_sampler_name(L.llama_sampler_chain_get(handle, i)).decode("utf-8", "replace")
        for i in range(L.llama_sampler_chain_n(handle))
    ]


def describe(handle: Any) -> str:
    """A chain as its samplers' names, e.g. 'specs-raw -> +temp -> specs-draw'."""
    return " -> ".join(_names(handle))
