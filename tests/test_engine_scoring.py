"""Teacher-forced scoring on tiny GGUFs through real llama.cpp: batched equals
one at a time, shared prefixes are decoded once, chunks respect n_batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.llama import LlamaModel


def prompt(model: LlamaModel, question: str) -> list[int]:
    return model.prompt_tokens(model.format_chat("Answer briefly.", question))


def alone(path: Path, open_model, prefix: list[int], candidate: list[int]) -> np.ndarray:
    """The plain way: a fresh context, one sequence, one candidate."""
    model = open_model(path, n_seq_max=2)
    [result] = model.score([(model.start(prefix), candidate)])
    return np.array(result.logprobs)


@pytest.mark.parametrize("family", ["tiny_qwen", "tiny_llama"])
def test_batched_logprobs_equal_one_at_a_time(family: str, request, open_model) -> None:
    path: Path = request.getfixturevalue(family)
    model = open_model(path, n_seq_max=16)
    rng = np.random.default_rng(0)
    beams = [model.start(prompt(model, q)) for q in ("What is 2 + 2?", "Name a prime number above 10.")]
    lengths = (1, 4, 9, 17, 3, 12)
    pairs = [(beams[i % 2], [int(t) for t in rng.integers(3, model.n_vocab, size=n)]) for i, n in enumerate(lengths)]
    results = model.score(pairs)
    for (beam, candidate), result in zip(pairs, results):
        assert result.seq.n_tokens == beam.n_tokens + len(candidate)
        reference = alone(path, open_model, list(beam.tokens), candidate)
        np.testing.assert_allclose(result.logprobs, reference, atol=1e-4)


def test_shared_prefixes_are_decoded_once_with_the_same_results(tiny_qwen: Path, open_model) -> None:
    shared, plain = open_model(tiny_qwen, n_seq_max=16), open_model(tiny_qwen, n_seq_max=16, share_histories=False)
    common = [70, 71, 72, 73]
    candidates = [common + [80, 81, 82], common + [90, 91], common + [80, 81, 82], common[:2], [99]]
    results = {}
    for model in (shared, plain):
        beam = model.start(prompt(model, "What is 12 + 30?"))
        # The beam's tail is undecoded (as after an accepted candidate): sharing decodes it once too.
        model.extend(beam, [60, 61])
        rows = model.usage.decoded_rows
        results[model] = (model.score([(beam, c) for c in candidates]), model.usage.decoded_rows - rows)
    for a, b in zip(results[shared][0], results[plain][0]):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    # Distinct (history, token) rows: prefixes of the tail plus each candidate but its last token.
    decoded = [[60, 61] + c[:-1] for c in candidates]
    distinct = {tuple(d[:i]) for d in decoded for i in range(1, len(d) + 1)}
    assert results[shared][1] == len(distinct) == 9
    assert results[plain][1] == sum(2 + len(c) - 1 for c in candidates)


def test_identical_candidates_get_their_own_sequences(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8)
    beam = model.start(prompt(model, "What is 12 + 30?"))
    first, second = model.score([(beam, [40, 41, 42]), (beam, [40, 41, 42])])
    assert first.logprobs == second.logprobs
    assert first.seq is not second.seq
    model.extend(first.seq, [43])
    assert second.seq.n_tokens == first.seq.n_tokens - 1


def test_small_n_batch_chunks_long_inputs(tiny_llama: Path, open_model) -> None:
    wide, narrow = open_model(tiny_llama, n_seq_max=8), open_model(tiny_llama, n_seq_max=8, n_batch=4)
    rng = np.random.default_rng(1)
    long_prompt = [1] + [int(t) for t in rng.integers(3, wide.n_vocab, size=40)]
    candidates = [[int(t) for t in rng.integers(3, wide.n_vocab, size=n)] for n in (30, 7, 19)]
    outcomes = []
    for model in (wide, narrow):
        beam = model.start(long_prompt)
        outcomes.append(model.score([(beam, c) for c in candidates]))
    for a, b in zip(*outcomes):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert narrow.usage.decoded_rows == wide.usage.decoded_rows


def test_next_token_logprobs_agree_with_scoring(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8)
    beam = model.start(prompt(model, "What is 12 + 30?"))
    candidate = [45, 46, 47]
    rows = model.usage.decoded_rows
    logprobs, [extended] = model.next_token_logprobs([(beam, candidate)], [48, 49])
    assert model.usage.decoded_rows - rows == len(candidate)  # all decoded: the row after the last is read
    [as_scored] = model.score([(beam, candidate + [48])])
    np.testing.assert_allclose(logprobs[0, 0], as_scored.logprobs[-1], atol=1e-5)
    # The extended sequence is cached whole; continuing it re-feeds one token.
    rows = model.usage.decoded_rows
    [again], _ = model.next_token_logprobs([(extended, [])], [48])
    assert model.usage.decoded_rows - rows == 1
    np.testing.assert_allclose(again[0], logprobs[0, 0], atol=1e-5)
