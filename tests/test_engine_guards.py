"""Every input that would abort llama.cpp is refused with a Python exception.

These tests really run the dangerous calls in-process: if a guard were missing,
llama.cpp would kill the test process and the run would show a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import pytest

from engines.base import ContextFullError, EngineError, ModelLoadError, SampleParams, SequencePoolExhausted
from engines.llama import LlamaModel


@pytest.fixture
def qwen(tiny_qwen: Path, open_model) -> LlamaModel:
    return open_model(tiny_qwen, n_seq_max=8)


def random_tokens(model: LlamaModel, n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 250, size=n)]


def test_token_ids_outside_the_vocabulary_are_refused(qwen: LlamaModel) -> None:
    seq = qwen.start([10, 11, 12])
    for bad in (qwen.n_vocab, qwen.n_vocab + 1000, -1):
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
            qwen.detokenize([5, bad])
        with pytest.raises(ValueError):
            qwen.extend(seq, [bad])
        with pytest.raises(ValueError):
            qwen.score([(seq, [5, bad])])
        with pytest.raises(ValueError):
            qwen.start([bad])
        with pytest.raises(ValueError):
            qwen.next_token_logprobs([(seq, [])], [bad])
    assert seq.n_tokens == 3 and qwen.live_sequences == 1


def test_n_batch_smaller_than_the_sequence_pool_and_the_inputs(tiny_qwen: Path, open_model) -> None:
    # llama.cpp aborts when a decode exceeds n_batch, and at context creation
    # when the sequence pool needs more output rows than n_batch allows.
    model = open_model(tiny_qwen, n_seq_max=16, n_batch=2)
    seq = model.start(random_tokens(model, 50))
    drafts = model.sample([seq], 10, SampleParams(temperature=1.0, max_tokens=5, delimiter=None))
    scored = model.score([(seq, d.tokens) for d in drafts[0][:4]])
    for d, s in zip(drafts[0], scored):
        np.testing.assert_allclose(d.logprobs, s.logprobs, atol=1e-4)


def test_an_exhausted_sequence_pool_names_the_numbers(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=4)
    seq = model.start([10, 11, 12])
    with pytest.raises(SequencePoolExhausted, match="needs 4 more sequence ids but only 3 of its 4 are free"):
        model.sample([seq], 4, SampleParams())
    with pytest.raises(SequencePoolExhausted):
        model.score([(seq, [1])] * 4)
    assert model.live_sequences == 1  # nothing was allocated by the refused calls
    forks = [model.fork(seq) for _ in range(3)]
    with pytest.raises(SequencePoolExhausted, match="only 0 of its 4"):
        model.fork(seq)
    model.release(forks[0])
    model.fork(seq)


def test_a_prompt_longer_than_the_context_names_both_lengths(qwen: LlamaModel) -> None:
    with pytest.raises(ContextFullError, match="the prompt has 600 tokens but the context of tiny-qwen holds 512"):
        qwen.start(random_tokens(qwen, 600))
    seq = qwen.start(random_tokens(qwen, 500))
    with pytest.raises(ContextFullError, match=r"needs 520 tokens .* holds 512"):
        qwen.extend(seq, random_tokens(qwen, 20))
    with pytest.raises(ContextFullError, match="needs 513 tokens"):
        qwen.score([(seq, random_tokens(qwen, 13))])


def test_sampling_stops_at_the_end_of_the_context(qwen: LlamaModel) -> None:
    seq = qwen.start(random_tokens(qwen, 509))
    [per_seq] = qwen.sample([seq], 2, SampleParams(temperature=1.0, max_tokens=50, delimiter=None, seed=2))
    assert all(d.seq.n_tokens <= 512 for d in per_seq)
    full = next(d for d in per_seq if d.seq.n_tokens == 512)
    assert full.stop.value == "length"
    with pytest.raises(ContextFullError, match="fills the 512-token context"):
        qwen.sample([full.seq], 1, SampleParams())


def test_a_full_kv_cache_is_an_error_and_the_model_recovers(qwen: LlamaModel) -> None:
    first = qwen.start(random_tokens(qwen, 200, seed=1))
    second = qwen.start(random_tokens(qwen, 200, seed=2))
    with pytest.raises(ContextFullError, match=r"KV cache of tiny-qwen \(512 cells\) has no room"):
        qwen.start(random_tokens(qwen, 200, seed=3))
    assert qwen.live_sequences == 2
    # Sampling many long candidates runs out of cells too, and releases its candidates.
    with pytest.raises(ContextFullError):
        qwen.sample([first, second], 3, SampleParams(temperature=1.0, max_tokens=100, delimiter=None))
    assert qwen.live_sequences == 2
    qwen.release(second)
    third = qwen.start(random_tokens(qwen, 200, seed=3))
    [[draft]] = qwen.sample([third], 1, SampleParams(max_tokens=4))
    assert draft.tokens


def test_released_sequences_and_closed_models_are_refused(tiny_qwen: Path) -> None:
    model = LlamaModel(tiny_qwen, n_seq_max=4)
    seq = model.start([10, 11, 12])
    model.release(seq)
    with pytest.raises(EngineError, match="released sequence"):
        model.sample([seq], 1, SampleParams())
    other = model.start([10, 11])
    model.close()
    for call in (lambda: model.start([1]), lambda: model.tokenize("x"), lambda: model.score([(other, [1])])):
        with pytest.raises(EngineError):
            call()
    model.release(other)  # harmless after close
    model.close()


def test_sequences_of_another_model_are_refused(tiny_qwen: Path, open_model) -> None:
    a, b = open_model(tiny_qwen, n_seq_max=2), open_model(tiny_qwen, n_seq_max=2)
    seq = a.start([10, 11])
    with pytest.raises(ValueError, match="not a sequence of"):
        b.score([(seq, [1])])


# --- files ---------------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(ModelLoadError, match=f"^cannot load {path}: the file does not exist.$"):
        LlamaModel(path)


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<html>rate limited</html>")
    with pytest.raises(ModelLoadError, match="it is not a GGUF file"):
        LlamaModel(path)
    with pytest.raises(ModelLoadError, match="not a regular file"):
        LlamaModel(tmp_path)


@pytest.mark.parametrize("keep", [0.005, 0.5, 0.999])
def test_a_truncated_file(tiny_qwen: Path, tmp_path: Path, keep: float) -> None:
    data = tiny_qwen.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match=f"cannot load {path}: the file is cut short"):
        LlamaModel(path)


def test_an_architecture_llama_cpp_does_not_know(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mystery.gguf"
    writer = gguf.GGUFWriter(str(path), "mystery-arch")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with (
        caplog.at_level(logging.ERROR, logger="llama.cpp"),
        pytest.raises(ModelLoadError, match=f"cannot load {path}: llama.cpp says: .*mystery-arch"),
    ):
        LlamaModel(path)
    assert any(r.name == "llama.cpp" and r.levelno == logging.ERROR for r in caplog.records)


def test_llama_cpp_is_quiet_by_default(tiny_qwen: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with LlamaModel(tiny_qwen, n_seq_max=2) as model:
        model.start([10, 11, 12])
    out, err = capfd.readouterr()
    assert out == "" and err == ""
