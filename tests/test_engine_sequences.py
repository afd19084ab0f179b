"""Sequences of engines/llama.py on a tiny qwen2 GGUF through real llama.cpp:
start, fork, extend, truncate, release, and that no cached prefix is decoded twice."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from engines.base import LanguageModel, SampleParams, Seq
from engines.llama import LlamaModel

CANDIDATE = [40, 50, 60, 70, 80]


@pytest.fixture
def qwen(tiny_qwen: Path, open_model) -> LlamaModel:
    return open_model(tiny_qwen, n_seq_max=16)


def prompt_tokens(model: LlamaModel) -> list[int]:
    return model.prompt_tokens(model.format_chat("Be brief.", "What is 2 + 2? Say it in the shortest way you can."))


def scored(model: LlamaModel, seq, tokens: list[int]) -> np.ndarray:
    [result] = model.score([(seq, tokens)])
    model.release(result.seq)
    return np.array(result.logprobs)


def test_the_model_fills_the_protocols(qwen: LlamaModel) -> None:
    for name in ("format_chat", "tokenize", "detokenize", "start", "fork", "extend", "truncate", "release"):
        wanted = inspect.signature(getattr(LanguageModel, name)).parameters
        given = inspect.signature(getattr(LlamaModel, name)).parameters
        assert list(given)[: len(wanted)] == list(wanted), name
    for name in ("sample", "score"):
        assert inspect.signature(getattr(LlamaModel, name)).parameters.keys() == (
            inspect.signature(getattr(LanguageModel, name)).parameters.keys()
        )
    seq = qwen.start(prompt_tokens(qwen))
    assert isinstance(seq, Seq)
    assert qwen.name == "tiny-qwen" and qwen.n_ctx == 512 and qwen.n_vocab == 272


def test_start_prefills_once_and_keeps_the_next_token_distribution(qwen: LlamaModel) -> None:
    tokens = prompt_tokens(qwen)
    seq = qwen.start(qwen.format_chat("Be brief.", "What is 2 + 2? Say it in the shortest way you can."))
    assert seq.tokens == tuple(tokens)
    assert qwen.usage.prefilled == qwen.usage.decoded_rows == len(tokens)
    # The first candidate token is scored from the kept row: no decode at all
    # (a one-token candidate's only token is its last, left undecoded).
    qwen.score([(seq, [5])])
    assert qwen.usage.decoded_rows == len(tokens)


def test_fork_shares_the_cache_and_diverges_independently(qwen: LlamaModel) -> None:
    parent = qwen.start(prompt_tokens(qwen))
    rows = qwen.usage.decoded_rows
    child = qwen.fork(parent)
    assert qwen.usage.decoded_rows == rows
    assert child.tokens == parent.tokens
    qwen.extend(child, [33, 34])
    assert child.n_tokens == parent.n_tokens + 2
    # The parent still scores as a fresh copy of the prompt does.
    fresh = qwen.start(prompt_tokens(qwen))
    np.testing.assert_allclose(scored(qwen, parent, CANDIDATE), scored(qwen, fresh, CANDIDATE), atol=1e-5)


def test_extended_sequence_scores_like_a_prompt_of_the_same_tokens(qwen: LlamaModel) -> None:
    tokens = prompt_tokens(qwen)
    grown = qwen.start(tokens[:10])
    qwen.extend(grown, tokens[10:])
    assert qwen.usage.decoded_rows == 10  # extend only appends; decoding waits for a use
    whole = qwen.start(tokens)
    np.testing.assert_allclose(scored(qwen, grown, CANDIDATE), scored(qwen, whole, CANDIDATE), atol=1e-4)


def test_truncate_re_feeds_at_most_one_token(qwen: LlamaModel) -> None:
    tokens = prompt_tokens(qwen)
    seq = qwen.start(tokens)
    qwen.truncate(seq, len(tokens) - 6)
    assert seq.tokens == tuple(tokens[:-6])
    rows = qwen.usage.decoded_rows
    after_truncate = scored(qwen, seq, CANDIDATE)
    # One re-fed token plus the candidate's tokens but its last.
    assert qwen.usage.decoded_rows - rows == 1 + len(CANDIDATE) - 1
    np.testing.assert_allclose(after_truncate, scored(qwen, qwen.start(tokens[:-6]), CANDIDATE), atol=1e-4)


def test_truncate_then_extend_needs_no_re_feed(qwen: LlamaModel) -> None:
    tokens = prompt_tokens(qwen)
    seq = qwen.start(tokens)
    qwen.truncate(seq, 12)
    qwen.extend(seq, tokens[12:])
    rows = qwen.usage.decoded_rows
    again = scored(qwen, seq, CANDIDATE)
    assert qwen.usage.decoded_rows - rows == len(tokens) - 12 + len(CANDIDATE) - 1
    np.testing.assert_allclose(again, scored(qwen, qwen.start(tokens), CANDIDATE), atol=1e-4)


def test_release_gives_ids_back_and_twice_is_harmless(tiny_qwen: Path) -> None:
    with LlamaModel(tiny_qwen, n_seq_max=2) as model:  # the context manager closes it
        first = model.start([1, 2, 3])
        second = model.fork(first)
        model.release(first)
        model.release(first)
        third = model.fork(second)
        assert model.live_sequences == 2
        model.release(second)
        model.release(third)
        assert model.live_sequences == 0


def test_a_kept_candidate_continues_without_recomputation(qwen: LlamaModel) -> None:
    beam = qwen.start(prompt_tokens(qwen))
    [result] = qwen.score([(beam, CANDIDATE)])
    assert result.seq.n_tokens == beam.n_tokens + len(CANDIDATE)
    rows = qwen.usage.decoded_rows
    [[draft]] = qwen.sample([result.seq], 1, SampleParams(temperature=0, max_tokens=3, delimiter=None))
    # Catching up costs the candidate's last token, then one row per new token but the last.
    assert qwen.usage.decoded_rows - rows == 1 + len(draft.tokens) - 1
    # And the draft continues the scored tokens exactly as a fresh sequence would.
    fresh = qwen.start(list(beam.tokens) + CANDIDATE)
    [[reference]] = qwen.sample([fresh], 1, SampleParams(temperature=0, max_tokens=3, delimiter=None))
    assert draft.tokens == reference.tokens
    np.testing.assert_allclose(draft.logprobs, reference.logprobs, atol=1e-4)
