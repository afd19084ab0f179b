"""Step sampling in llama.cpp's graph (engines.device_sampling), on the CPU
backend with the tiny GGUFs, against the numpy path as the reference."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

import engines.device_sampling as D
from engines.base import EngineError, SampleParams
from engines.llama import LlamaModel

QUESTION = "What is 2 + 2?"


def prompt(model: LlamaModel):
    return model.start(model.format_chat("Answer briefly.", QUESTION))


def sample(model: LlamaModel, k: int, params: SampleParams):
    beam = prompt(model)
    [drafts] = model.sample([beam], k, params)
    result = [(d.tokens, d.logprobs, d.stop) for d in drafts]
    for d in drafts:
        model.release(d.seq)
    model.release(beam)
    return result


@pytest.fixture(params=["tiny_qwen", "tiny_llama"])
def tiny(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_this_build_can_sample_in_the_graph() -> None:
    assert D.unavailable_reason() is None


@pytest.mark.parametrize(("temperature", "top_p"), [(0.0, 1.0), (0.7, 1.0), (1.0, 1.0), (1.3, 1.0), (0.8, 0.7)])
@pytest.mark.parametrize("share", [True, False])
def test_device_draws_the_host_tokens_with_the_same_logprobs(
    tiny: Path, open_model, temperature: float, top_p: float, share: bool
) -> None:
    """Both paths draw with the same uniforms of the same streams, so they pick
    the same tokens; the device's T=1 log-probabilities match within 1e-4."""
    params = SampleParams(temperature=temperature, top_p=top_p, max_tokens=16, seed=7)
    host = open_model(tiny, n_seq_max=16, sampling="host", share_histories=share)
    device = open_model(tiny, n_seq_max=16, sampling="device", share_histories=share)
    assert not host.device_sampling and device.device_sampling
    expected, got = sample(host, 6, params), sample(device, 6, params)
    assert [(tokens, stop) for tokens, _, stop in got] == [(tokens, stop) for tokens, _, stop in expected]
    for (_, want, _), (_, have, _) in zip(expected, got):
        np.testing.assert_allclose(have, want, atol=1e-4)


def test_rows_split_over_several_decodes_read_their_own_draws(tiny_qwen: Path, open_model) -> None:
    """Eight separate rows with n_batch 3: each decode's rows are read before the next."""
    params = SampleParams(temperature=1.0, max_tokens=12, seed=3, delimiter=None)
    kwargs = {"n_seq_max": 16, "n_batch": 3, "share_histories": False}
    host = open_model(tiny_qwen, sampling="host", **kwargs)
    device = open_model(tiny_qwen, sampling="device", **kwargs)
    assert [t for t, _, _ in sample(device, 8, params)] == [t for t, _, _ in sample(host, 8, params)]


def test_the_same_seed_draws_the_same_tokens_on_the_device(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=16, sampling="device")
    params = SampleParams(temperature=0.9, top_p=0.95, max_tokens=16, seed=11)
    first, again = sample(model, 6, params), sample(model, 6, params)
    assert first == again
    other = sample(model, 6, SampleParams(temperature=0.9, top_p=0.95, max_tokens=16, seed=12))
    assert [t for t, _, _ in other] != [t for t, _, _ in first]


def test_shared_history_rows_on_the_device(tiny_qwen: Path, open_model) -> None:
    """Greedy candidates share one row per token; each candidate on a shared
    row still gets a draw of its own (at T=1 they part)."""
    model = open_model(tiny_qwen, n_seq_max=16, sampling="device")
    beam = prompt(model)
    rows = model.usage.decoded_rows
    [greedy] = model.sample([beam], 6, SampleParams(temperature=0.0, max_tokens=10, seed=0, delimiter=None))
    assert len({tuple(d.tokens) for d in greedy}) == 1
    assert model.usage.decoded_rows - rows == len(greedy[0].tokens) - 1  # the last token stays undecoded
    [hot] = model.sample([beam], 6, SampleParams(temperature=1.0, max_tokens=10, seed=0, delimiter=None))
    assert len({tuple(d.tokens) for d in hot}) > 1


def _chi_square_quantile(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty: the chi-square quantile at the normal quantile z (3.09: 0.999)."""
    a = 2 / (9 * dof)
    return dof * (1 - a + z * math.sqrt(a)) ** 3


def _numpy_probs(logprobs: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The distribution the numpy path draws from, given a row's T=1 log-probabilities."""
    weights = np.exp((logprobs - logprobs.max()) / temperature)
    order = np.argsort(-weights, kind="stable")
    cut = int(np.searchsorted(np.cumsum(weights[order]), top_p * weights.sum())) + 1
    probs = np.zeros_like(weights)
    probs[order[:cut]] = weights[order[:cut]] / weights[order[:cut]].sum()
    return probs


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 0.9)])
def test_device_draws_follow_the_numpy_distribution(
    tiny_qwen: Path, open_model, temperature: float, top_p: float
) -> None:
    """Goodness of fit over many seeds. Each candidate's second token is drawn
    on the device from the row after its first token; under the distribution
    the numpy path draws from on that row, the randomised CDF value of the
    drawn token (tokens in order of probability), F(b-) + V p(b), is uniform on
    [0, 1) whatever the row.
    Twenty equal bins of 1200 such values, chi-square at the 0.999 level."""
    model = open_model(tiny_qwen, n_seq_max=40, sampling="device", share_histories=False)
    beam = prompt(model)
    pairs: list[tuple[int, int]] = []
    for seed in range(150):
        params = SampleParams(temperature, top_p, max_tokens=2, seed=seed, delimiter=None)
        [drafts] = model.sample([beam], 8, params)
        pairs += [(d.tokens[0], d.tokens[1]) for d in drafts if len(d.tokens) == 2]
        for d in drafts:
            model.release(d.seq)
    assert len(pairs) >= 1000
    firsts = sorted({a for a, _ in pairs})
    rows = {}
    for start in range(0, len(firsts), 30):
        chunk = firsts[start : start + 30]
        logprobs, children = model.next_token_logprobs([(beam, [a]) for a in chunk], range(model.n_vocab))
        for a, row in zip(chunk, logprobs):
            rows[a] = _numpy_probs(row, temperature, top_p)
        for child in children:
            model.release(child)
    jitter = np.random.default_rng(0).random(len(pairs))
    values = []
    for (a, b), v in zip(pairs, jitter):
        probs = rows[a]
        assert probs[b] > 0  # never outside the nucleus
        # In order of probability, so that too much or too little of the head shows.
        before = probs[probs > probs[b]].sum() + probs[(probs == probs[b]) & (np.arange(len(probs)) < b)].sum()
        values.append(before + v * probs[b])
    observed = np.histogram(values, bins=20, range=(0.0, 1.0))[0]
    expected = len(values) / 20
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < _chi_square_quantile(19)


def test_candidates_sampled_on_the_device_are_teacher_forced_after(tiny_qwen: Path, open_model) -> None:
    """The chains leave the sequences with the call: scoring many tokens of a
    candidate (several outputs per sequence) works right after, and equals
    what the numpy path's candidates give."""
    results = []
    for sampling in ("host", "device"):
        model = open_model(tiny_qwen, n_seq_max=16, sampling=sampling)
        beam = prompt(model)
        [drafts] = model.sample([beam], 3, SampleParams(temperature=0.8, max_tokens=6, seed=2, delimiter=None))
        scored = model.score([(d.seq, [11, 12, 13]) for d in drafts])
        results.append((drafts[0].tokens, [s.logprobs for s in scored]))
    assert results[0][0] == results[1][0]
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-5)


def test_a_draft_never_draws_ids_past_its_limit_on_the_device(tiny_qwen: Path, open_model) -> None:
    """The last three ids (<|im_start|>, <|im_end|> (likely: biased), <extra_0>) cut off."""
    params = SampleParams(temperature=1.5, max_tokens=24, seed=1, delimiter=None)
    unlimited = open_model(tiny_qwen, n_seq_max=16, sampling="device")
    limit = unlimited.n_vocab - 3
    assert max(t for tokens, _, _ in sample(unlimited, 6, params) for t in tokens) >= limit
    runs = {}
    for sampling in ("host", "device"):
        model = open_model(tiny_qwen, n_seq_max=16, sampling=sampling)
        model.sampler.limit = limit  # as check_shared_vocab sets it for a smaller target
        runs[sampling] = [tokens for tokens, _, _ in sample(model, 6, params)]
    assert runs["device"] == runs["host"]
    assert max(t for tokens in runs["device"] for t in tokens) < limit


def test_a_build_without_backend_sampling_samples_on_the_host_with_one_log_line(
    tiny_qwen: Path, open_model, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(D, "unavailable_reason", lambda: "llama-cpp-python 0.3.16 has no llama_set_sampler")
    with caplog.at_level(logging.WARNING, logger=D.__name__):
        model = open_model(tiny_qwen, n_seq_max=16, sampling="device")
    assert not model.device_sampling
    assert [r.getMessage() for r in caplog.records] == [
        "tiny-qwen samples on the host: llama-cpp-python 0.3.16 has no llama_set_sampler."
    ]
    host = open_model(tiny_qwen, n_seq_max=16, sampling="host")
    params = SampleParams(temperature=0.7, max_tokens=8, seed=4)
    assert sample(model, 4, params) == sample(host, 4, params)


def test_a_backend_that_lacks_an_op_falls_back_once(
    tiny_qwen: Path, open_model, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device without one of the ops (found when the first chain is attached)
    switches the model to the host for good, with one log line, no abort."""
    monkeypatch.setattr(D, "_unsupported_op", lambda device, chain: "CUMSUM")
    monkeypatch.setattr(D._ggml.load(), "ggml_backend_buft_get_device", lambda buft: 1)
    monkeypatch.setattr(D._ggml.load(), "ggml_backend_dev_name", lambda device: b"TestGPU")
    model = open_model(tiny_qwen, n_seq_max=16, sampling="device")
    live = model.live_sequences
    params = SampleParams(temperature=0.7, max_tokens=8, seed=4)
    with caplog.at_level(logging.WARNING, logger=D.__name__):
        first = sample(model, 4, params)
        second = sample(model, 4, params)
    assert first == second
    assert not model.device_sampling and model.live_sequences == live
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "tiny-qwen samples on the host: llama.cpp cannot sample in the graph here: "
        "the device TestGPU cannot run the ggml op CUMSUM."
    ]


def test_a_chain_llama_cpp_rejects_is_an_exception_naming_it(
    tiny_qwen: Path, open_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = open_model(tiny_qwen, n_seq_max=16, sampling="device")
    beam = prompt(model)
    live = model.live_sequences
    monkeypatch.setattr(D.L, "llama_set_sampler", lambda ctx, seq_id, chain: False)
    with pytest.raises(
        D.SamplerChainRejected, match=r"rejected the sampler chain specs-raw -> temp -> top-p -> specs-draw"
    ):
        model.sample([beam], 2, SampleParams(temperature=0.7, top_p=0.9, max_tokens=4, seed=0))
    assert model.live_sequences == live
    assert isinstance(D.SamplerChainRejected("x"), EngineError)
    monkeypatch.undo()
    [drafts] = model.sample([beam], 2, SampleParams(temperature=0.7, top_p=0.9, max_tokens=4, seed=0))
    assert all(d.tokens for d in drafts)


def test_an_unknown_sampling_mode_is_an_error(tiny_qwen: Path, open_model) -> None:
    with pytest.raises(ValueError, match="sampling must be one of auto, device, host, not 'gpu'"):
        open_model(tiny_qwen, sampling="gpu")


def test_auto_samples_on_the_host_when_nothing_is_offloaded(
    tiny_qwen: Path, open_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPECS_LOCAL_SAMPLING", raising=False)
    assert not open_model(tiny_qwen, n_gpu_layers=0).device_sampling
    monkeypatch.setenv("SPECS_LOCAL_SAMPLING", "device")
    assert open_model(tiny_qwen, n_gpu_layers=0).device_sampling


@pytest.mark.real
def test_the_real_vocabulary_gives_the_host_logprobs_on_the_device(dev_model_small: Path) -> None:
    """151,936 logits per row: where the two paths' tokens agree (all of them
    but for a float32 rounding at a boundary), the device's log-probabilities
    are the numpy path's within 1e-4."""
    params = SampleParams(temperature=0.7, max_tokens=12, seed=5, delimiter=None)
    runs = {}
    for sampling in ("host", "device"):
        with LlamaModel(dev_model_small, n_ctx=1024, n_seq_max=8, sampling=sampling) as model:
            runs[sampling] = sample(model, 4, params)
    compared = 0
    for (host_tokens, host_lp, _), (device_tokens, device_lp, _) in zip(runs["host"], runs["device"]):
        same = next((i for i, (a, b) in enumerate(zip(host_tokens, device_tokens)) if a != b), len(host_tokens))
        np.testing.assert_allclose(device_lp[:same], host_lp[:same], atol=1e-4)
        compared += same
    assert compared >= 0.75 * sum(len(t) for t, _, _ in runs["host"])


def test_hidden_states_come_with_device_draws(tiny_qwen: Path, open_model) -> None:
    """A model that keeps final hidden states (for a value-head reward) keeps
    the same ones when its tokens are drawn in the graph."""
    params = SampleParams(temperature=0.9, max_tokens=10, seed=6)
    runs = {}
    for sampling in ("host", "device"):
        model = open_model(tiny_qwen, n_seq_max=16, hidden_states=True, sampling=sampling)
        beam = prompt(model)
        [drafts] = model.sample([beam], 4, params)
        runs[sampling] = [(d.tokens, d.hidden) for d in drafts]
    for (host_tokens, host_state), (device_tokens, device_state) in zip(runs["host"], runs["device"]):
        assert device_tokens == host_tokens
        assert host_state is not None and device_state is not None
        np.testing.assert_allclose(device_state, host_state, atol=1e-5)
