"""Whether a draft's tokens mean the same to a target, decided the way
llama.cpp's speculative example decides it: same tokenizer type, same BOS/EOS
handling, sizes at most 128 apart, and the same text for every shared id from 5 on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp as L

from engines import _native as N
from engines.base import VocabularyMismatch

if TYPE_CHECKING:
    from engines.llama import LlamaModel

_MAX_SIZE_DIFFERENCE = 128
_CHECK_START_TOKEN_ID = 5


def vocab_problem(draft: L.llama_vocab_p, target: L.llama_vocab_p) -> str | None:
    """Why a draft cannot propose tokens for a target (None when it can)."""
    if L.llama_vocab_type(draft) != L.llama_vocab_type(target):
        return "their tokenizers are of different types"
    if L.llama_vocab_get_add_bos(draft) != L.llama_vocab_get_add_bos(target):
        return "one adds a BOS token and the other does not"
    if L.llama_vocab_get_add_eos(draft) != L.llama_vocab_get_add_eos(target):
        return "one adds an EOS token and the other does not"
    for label, special in (("BOS", L.llama_vocab_bos), ("EOS", L.llama_vocab_eos)):
        if special(draft) != special(target):
            return f"their {label} tokens differ ({special(draft)} and {special(target)})"
    n_draft, n_target = L.llama_vocab_n_tokens(draft), L.llama_vocab_n_tokens(target)
    if abs(n_draft - n_target) > _MAX_SIZE_DIFFERENCE:
        return f"their vocabularies have {n_draft} and {n_target} tokens, more than {_MAX_SIZE_DIFFERENCE} apart"
    for token in range(_CHECK_START_TOKEN_ID, min(n_draft, n_target)):
        a, b = L.llama_vocab_get_text(draft, token), L.llama_vocab_get_text(target, token)
        if a != b:
            a_text, b_text = a.decode("utf-8", "replace"), b.decode("utf-8", "replace")
            return f"token {token} is {a_text!r} in one and {b_text!r} in the other"
    return None


def _mismatch(draft: str, target: str, problem: str) -> VocabularyMismatch:
    return VocabularyMismatch(
        f"the draft {draft} cannot propose tokens for the target {target}: {problem}; "
        "pick a draft of the target's model family."
    )


def check_shared_vocab(draft: LlamaModel, target: LlamaModel) -> None:
    """Raise VocabularyMismatch unless the draft's tokens mean the same to the target;
    then make the draft sample only ids the target has."""
    problem = vocab_problem(draft.vocab, target.vocab)
    if problem:
        raise _mismatch(draft.name, target.name, problem)
    draft.sampler.limit = min(draft.n_vocab, target.n_vocab)


def check_vocab_files(draft_path: str | Path, target_path: str | Path) -> None:
    """check_shared_vocab on two GGUF files, loading their vocabularies only."""
    models = []
    try:
        for path in (Path(draft_path), Path(target_path)):
            models.append(N.load_model(path, n_gpu_layers=0, vocab_only=True))
        problem = vocab_problem(L.llama_model_get_vocab(models[0]), L.llama_model_get_vocab(models[1]))
    finally:
        for model in models:
            L.llama_model_free(model)
    if problem:
        raise _mismatch(Path(draft_path).name, Path(target_path).name, problem)
