"""The numpy sampling mathematics, without llama.cpp: streams, log-sum-exp, inverse CDF, nucleus, picks."""

from __future__ import annotations

import numpy as np
import pytest

from engines.base import SampleParams
from engines.sampling import BLOCK, HostSampler, candidate_stream, inverse_cdf, logsumexp, nucleus


def plain_draws(row: np.ndarray, draws: list[float], temperature: float, top_p: float = 1.0) -> list[int]:
    """The textbook way: softmax at T in float64, sort for the nucleus, one searchsorted per draw."""
    weights = np.exp((row.astype(np.float64) - row.max()) / temperature)
    order = np.argsort(-weights, kind="stable") if top_p < 1 else np.arange(len(row))
    cumulative = np.cumsum(weights[order])
    if top_p < 1:
        cumulative = cumulative[: int(np.searchsorted(cumulative, top_p * weights.sum())) + 1]
    picks = np.searchsorted(cumulative, np.asarray(draws) * cumulative[-1], side="right")
    return [int(order[min(int(p), len(cumulative) - 1)]) for p in picks]


def streams(seed: int, n: int) -> list[np.random.Generator]:
    return [candidate_stream(seed, 0, j) for j in range(n)]


def test_candidate_streams_are_fixed_by_seed_input_and_candidate() -> None:
    # Exact values: the same seed must give the same tokens in every release.
    assert candidate_stream(0, 0, 0).random() == 0.6369616873214543
    assert candidate_stream(0, 0, 1).random() == 0.4492388188116676
    assert candidate_stream(7, 1, 0).random() == 0.7701409510034741
    draws = {(s, i, j): candidate_stream(s, i, j).random() for s in range(2) for i in range(2) for j in range(3)}
    assert len(set(draws.values())) == len(draws)


def test_logsumexp_leaves_the_row_and_the_exponentials_in_scratch() -> None:
    row = np.array([3.0, -1.0, 0.5, 2.0], np.float32)
    before = row.copy()
    scratch = np.empty(8, np.float32)
    top, log_z = logsumexp(row, scratch)
    assert top == 3.0
    assert log_z == pytest.approx(float(np.logaddexp.reduce(row.astype(np.float64))), abs=1e-6)
    np.testing.assert_array_equal(row, before)
    np.testing.assert_allclose(scratch[:4], np.exp(row - 3.0), rtol=1e-6)


def test_the_two_level_inverse_cdf_draws_like_the_plain_one() -> None:
    rng = np.random.default_rng(0)
    weights = (rng.random(5000) ** 8).astype(np.float32)  # peaky, many tiny weights
    weights[1234] = 0.0
    draws = rng.random(4000)
    plain = np.searchsorted(np.cumsum(weights, dtype=np.float64), draws * weights.sum(dtype=np.float64), side="right")
    chosen = np.array(inverse_cdf(weights, draws))
    assert np.mean(chosen == plain) > 0.999  # float32 block totals may move a boundary by a rounding
    assert np.all(weights[chosen] > 0)


def test_the_inverse_cdf_handles_vocabularies_shorter_than_and_not_a_multiple_of_a_block() -> None:
    for n in (5, BLOCK, BLOCK + 3, 3 * BLOCK - 1):
        weights = np.zeros(n, np.float32)
        weights[[0, n // 2, n - 1]] = [1.0, 2.0, 1.0]
        chosen = inverse_cdf(weights, [0.0, 0.2, 0.5, 0.9, 0.999999])
        assert chosen == [0, 0, n // 2, n - 1, n - 1]  # a quarter, a half, a quarter of the mass


def test_the_nucleus_holds_the_most_likely_tokens_up_to_top_p() -> None:
    weights = np.array([0.05, 0.4, 0.3, 0.2, 0.05], np.float32)
    draws = np.linspace(0, 0.999, 200)
    assert set(nucleus(weights, draws, 0.65)) == {1, 2}
    assert set(nucleus(weights, draws, 0.75)) == {1, 2, 3}
    assert nucleus(weights, [0.0, 0.999], 1e-6) == [1, 1]


ROW = np.log(np.array([0.1, 0.2, 0.3, 0.25, 0.15], np.float32)) * 2


@pytest.mark.parametrize(
    "params",
    [
        SampleParams(temperature=1.0, seed=3),
        SampleParams(temperature=0.5, seed=4),
        SampleParams(temperature=1.7, top_p=0.6, seed=5),
    ],
)
def test_picks_follow_the_tempered_distribution_and_report_t1_logprobs(params: SampleParams) -> None:
    sampler = HostSampler(len(ROW))
    row = ROW.copy()
    tokens, logprobs = sampler.pick(row, streams(params.seed, 64), params)
    draws = [s.random() for s in streams(params.seed, 64)]
    assert tokens == plain_draws(ROW, draws, params.temperature, params.top_p)
    log_softmax = ROW - np.logaddexp.reduce(ROW.astype(np.float64))
    np.testing.assert_allclose(logprobs, log_softmax[tokens], atol=1e-6)
    np.testing.assert_array_equal(row, ROW)  # the row may be llama.cpp's buffer: never written


def test_the_same_streams_give_the_same_tokens() -> None:
    tokens, _ = HostSampler(len(ROW)).pick(ROW, streams(3, 8), SampleParams(temperature=1.0, seed=3))
    assert tokens == [1, 3, 2, 1, 2, 3, 3, 2]


def test_greedy_takes_the_argmax_and_draws_nothing() -> None:
    given = streams(1, 3)
    tokens, logprobs = HostSampler(len(ROW)).pick(ROW, given, SampleParams(temperature=0))
    assert tokens == [2, 2, 2]
    assert logprobs == pytest.approx([float(ROW[2] - np.logaddexp.reduce(ROW.astype(np.float64)))] * 3, abs=1e-6)
    assert [s.random() for s in given] == [s.random() for s in streams(1, 3)]


def test_ids_from_the_limit_on_are_never_drawn() -> None:
    row = np.array([0.0, 0.5, 9.0, 9.0], np.float32)  # the last two dominate
    sampler = HostSampler(len(row))
    sampler.limit = 2
    for params in (SampleParams(temperature=1.0), SampleParams(temperature=0), SampleParams(top_p=0.5)):
        tokens, logprobs = sampler.pick(row, streams(0, 50), params)
        assert set(tokens) <= {0, 1}
        shared = np.exp(row[:2]) / np.exp(row[:2]).sum()  # normalised over the ids the target has
        np.testing.assert_allclose(np.exp(logprobs), shared[tokens], rtol=1e-6)
