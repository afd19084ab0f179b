"""Batched step sampling on a tiny qwen2 GGUF through real llama.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engines.llama as llama_module
from engines.base import STEP_DELIMITER, Cancelled, SampleParams, StopReason
from engines.llama import LlamaModel
from engines.vocab import check_shared_vocab


@pytest.fixture(autouse=True, params=["host", "device"])
def sampling_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both paths: numpy on the host, and llama.cpp's graph."""
    monkeypatch.setenv("SPECS_LOCAL_SAMPLING", request.param)
    return request.param


@pytest.fixture
def qwen(tiny_qwen: Path, open_model) -> LlamaModel:
    return open_model(tiny_qwen, n_seq_max=40)


def beams(model: LlamaModel, *questions: str):
    return [model.start(model.format_chat("Answer briefly.", q)) for q in questions]


def release_all(model: LlamaModel, drafts) -> None:
    for per_seq in drafts:
        for d in per_seq:
            model.release(d.seq)


def test_sampled_logprobs_equal_teacher_forced_scoring(qwen: LlamaModel) -> None:
    a, b = beams(qwen, "What is 2 + 2?", "What is 3 * 7?")
    drafts = qwen.sample([a, b], 4, SampleParams(temperature=1.0, max_tokens=10, seed=3))
    assert [len(per_seq) for per_seq in drafts] == [4, 4]
    for beam, per_seq in zip((a, b), drafts):
        scored = qwen.score([(beam, d.tokens) for d in per_seq])
        for d, s in zip(per_seq, scored):
            assert len(d.logprobs) == len(d.tokens) >= 1
            np.testing.assert_allclose(d.logprobs, s.logprobs, atol=1e-4)
            assert d.seq.tokens == beam.tokens + tuple(d.tokens)


def test_the_same_seed_gives_the_same_drafts(tiny_qwen: Path, open_model) -> None:
    params = SampleParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=42)
    runs = []
    for _ in range(2):
        model = open_model(tiny_qwen, n_seq_max=16)
        [per_seq] = model.sample(beams(model, "What is 2 + 2?"), 6, params)
        runs.append([(d.tokens, d.text, d.stop) for d in per_seq])
    assert runs[0] == runs[1]
    model = open_model(tiny_qwen, n_seq_max=16)
    other_seed = SampleParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=43)
    [other] = model.sample(beams(model, "What is 2 + 2?"), 6, other_seed)
    assert [d.tokens for d in other] != [tokens for tokens, _, _ in runs[0]]


def test_every_stop_reason_with_its_invariants(qwen: LlamaModel) -> None:
    max_tokens = 12
    params = SampleParams(temperature=1.0, max_tokens=max_tokens, seed=5)
    [per_seq] = qwen.sample(beams(qwen, "What is 2 + 2?"), 32, params)
    reasons = {d.stop for d in per_seq}
    assert reasons == {StopReason.DELIMITER, StopReason.EOS, StopReason.LENGTH}
    for d in per_seq:
        assert d.text == qwen.detokenize(d.tokens)
        before_last = qwen.detokenize(d.tokens[:-1])
        assert STEP_DELIMITER not in before_last
        if d.stop is StopReason.DELIMITER:
            assert STEP_DELIMITER in d.text and not qwen.is_eog(d.tokens[-1])
        elif d.stop is StopReason.EOS:
            assert qwen.is_eog(d.tokens[-1]) and d.text == before_last  # EOS adds no text
        else:
            assert len(d.tokens) == max_tokens and STEP_DELIMITER not in d.text
    # Qwen-like vocabularies carry the delimiter inside tokens such as ".\n\n":
    # the draft keeps that whole token.
    glued = [d for d in per_seq if d.stop is StopReason.DELIMITER and qwen.token_text(d.tokens[-1]) != "ĊĊ"]
    assert glued and all(d.text.endswith(".\n\n") for d in glued)


def test_without_a_delimiter_steps_run_to_eos_or_the_cap(qwen: LlamaModel) -> None:
    params = SampleParams(temperature=1.0, max_tokens=20, seed=5, delimiter=None)
    [per_seq] = qwen.sample(beams(qwen, "What is 2 + 2?"), 16, params)
    assert {d.stop for d in per_seq} <= {StopReason.EOS, StopReason.LENGTH}
    assert any(STEP_DELIMITER in d.text for d in per_seq)


def test_greedy_candidates_share_one_row_per_token(qwen: LlamaModel) -> None:
    [beam] = beams(qwen, "What is 2 + 2?")
    rows = qwen.usage.decoded_rows
    [per_seq] = qwen.sample([beam], 8, SampleParams(temperature=0, max_tokens=15, delimiter=None))
    assert len({tuple(d.tokens) for d in per_seq}) == 1
    tokens = per_seq[0].tokens
    assert qwen.usage.decoded_rows - rows == len(tokens) - 1
    assert qwen.usage.generated == 8 * len(tokens)
    # Greedy means the argmax of the model's distribution at every step.
    for i, token in enumerate(tokens):
        logprobs, children = qwen.next_token_logprobs([(beam, tokens[:i])], list(range(qwen.n_vocab)))
        assert int(np.argmax(logprobs[0])) == token
        qwen.release(children[0])


def test_a_tiny_top_p_is_greedy(qwen: LlamaModel) -> None:
    [beam] = beams(qwen, "What is 2 + 2?")
    [greedy] = qwen.sample([beam], 1, SampleParams(temperature=0, max_tokens=10, delimiter=None))
    [nucleus] = qwen.sample([beam], 3, SampleParams(temperature=1.5, top_p=1e-6, max_tokens=10, delimiter=None, seed=9))
    assert all(d.tokens == greedy[0].tokens for d in nucleus)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_shared_histories_sample_exactly_as_separate_ones(tiny_qwen: Path, open_model, temperature: float) -> None:
    shared = open_model(tiny_qwen, n_seq_max=40)
    plain = open_model(tiny_qwen, n_seq_max=40, share_histories=False)
    params = SampleParams(temperature=temperature, max_tokens=16, seed=11, delimiter=None)
    outcomes = {}
    for model in (shared, plain):
        starts = beams(model, "What is 2 + 2?", "What is 5 - 3?")
        rows = model.usage.decoded_rows
        drafts = model.sample(starts, 8, params)
        outcomes[model] = (drafts, model.usage.decoded_rows - rows)
    for per_a, per_b in zip(outcomes[shared][0], outcomes[plain][0]):
        for a, b in zip(per_a, per_b):
            assert (a.tokens, a.stop) == (b.tokens, b.stop)
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    drafts = outcomes[plain][0]
    # Rows decoded: the distinct (history, token) pairs of all candidates but their last tokens.
    distinct = {(i, tuple(d.tokens[:n])) for i, per in enumerate(drafts) for d in per for n in range(1, len(d.tokens))}
    assert outcomes[shared][1] == len(distinct)
    assert outcomes[plain][1] == sum(len(d.tokens) - 1 for per in drafts for d in per)
    if temperature < 0.1:  # near-greedy candidates stay together for a while
        assert outcomes[shared][1] < outcomes[plain][1] / 2


def test_progress_and_cancellation(qwen: LlamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_module, "_PROGRESS_INTERVAL_S", 0.0)
    [beam] = beams(qwen, "What is 2 + 2?")
    live = qwen.live_sequences
    seen: list[list[list[str]]] = []
    drafts = qwen.sample([beam], 3, SampleParams(max_tokens=6, delimiter=None), progress=seen.append)
    assert seen and all(len(texts) == 1 and len(texts[0]) == 3 for texts in seen)
    assert max(len(t) for t in seen[-1][0]) > 0
    release_all(qwen, drafts)
    checks = iter(range(100))
    with pytest.raises(Cancelled):
        qwen.sample([beam], 3, SampleParams(max_tokens=50, delimiter=None), should_stop=lambda: next(checks) >= 4)
    assert qwen.live_sequences == live  # the cancelled call released what it had allocated


def test_a_draft_samples_only_ids_its_target_has(tiny_gguf_writer, tmp_path: Path, open_model) -> None:
    # The draft's vocabulary has 40 extra tokens the target lacks, and likes one of them.
    draft_path = tiny_gguf_writer.write_qwen_like(
        tmp_path / "draft.gguf", n_vocab=312, seed=1, weight_scale=0.1, output_bias={"<|extra_3|>": 4.0}
    )
    target_path = tiny_gguf_writer.write_qwen_like(tmp_path / "target.gguf", seed=2)
    draft, target = open_model(draft_path, n_seq_max=20), open_model(target_path, n_seq_max=2)
    params = SampleParams(temperature=1.0, max_tokens=12, seed=1, delimiter=None)
    [before] = draft.sample(beams(draft, "What is 2 + 2?"), 8, params)
    assert any(t >= target.n_vocab for d in before for t in d.tokens)
    check_shared_vocab(draft, target)
    [after] = draft.sample(beams(draft, "What is 2 + 2?"), 8, params)
    assert all(t < target.n_vocab for d in after for t in d.tokens)
