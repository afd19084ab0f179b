"""Draft/target vocabulary checks, as llama.cpp's speculative example makes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engines.base import ModelLoadError, VocabularyMismatch
from engines.vocab import check_shared_vocab, check_vocab_files


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_writer) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vocab")
    write = tiny_gguf_writer.write_qwen_like
    swapped = list(tiny_gguf_writer.QWEN_MERGES)
    swapped[2], swapped[5] = swapped[5], swapped[2]  # same tokens, other ids from 258 on
    return {
        "qwen": write(folder / "qwen.gguf", seed=1),
        "qwen-other-weights": write(folder / "qwen-b.gguf", seed=2, n_vocab=372),
        "qwen-wide": write(folder / "qwen-wide.gguf", seed=3, n_vocab=500),
        "qwen-swapped": write(folder / "qwen-swapped.gguf", seed=4, merge_pairs=swapped),
        "llama": tiny_gguf_writer.write_llama_like(folder / "llama.gguf"),
    }


@pytest.mark.parametrize(
    "draft, target, problem",
    [
        ("qwen", "qwen-other-weights", None),  # 100 more tokens in the target: within 128
        ("qwen-other-weights", "qwen", None),
        ("qwen", "qwen-wide", "their vocabularies have 272 and 500 tokens, more than 128 apart"),
        ("qwen", "qwen-swapped", "token 258 is 'Ġt' in one and 'es' in the other"),
        ("qwen", "llama", "their tokenizers are of different types"),
    ],
)
def test_vocabularies_are_compared_like_llama_cpp_does(vocab_files, open_model, draft, target, problem) -> None:
    draft_model = open_model(vocab_files[draft], n_seq_max=1)
    target_model = open_model(vocab_files[target], n_seq_max=1)
    if problem is None:
        check_shared_vocab(draft_model, target_model)
        check_vocab_files(vocab_files[draft], vocab_files[target])
        assert draft_model.sampler.limit == min(draft_model.n_vocab, target_model.n_vocab)
        return
    message = f"the draft {draft_model.name} cannot propose tokens for the target {target_model.name}: {problem}; "
    with pytest.raises(VocabularyMismatch, match=re.escape(message)):
        check_shared_vocab(draft_model, target_model)
    with pytest.raises(VocabularyMismatch, match=problem):
        check_vocab_files(vocab_files[draft], vocab_files[target])


def test_checking_files_refuses_bad_files(vocab_files, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(vocab_files["qwen"].read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="cut short"):
        check_vocab_files(vocab_files["qwen"], broken)
