"""Shared fixtures: tiny random-weight GGUF models and the real development models.

Tiny models are written once per session by scripts/tiny_gguf.py and run
through real llama.cpp in milliseconds. The development models live in
SPECS_LOCAL_MODELS_DIR (`app.config.models_dir()`); tests that need them are
marked `real` and skip when a file is absent, except under CI=true, where a
missing model is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.openmp import set_openmp_defaults

# As app.cli does for the app, before any test module loads llama_cpp (whose
# OpenMP reads it once): long-spinning workers make real-model tests crawl on a busy machine.
set_openmp_defaults()

# fakehub holds fixtures and assertions shared by the hub tests.
pytest.register_assert_rewrite("fakehub")
pytest_plugins = ["fakehub"]

from fakehub import tiny_gguf_module

from app.config import models_dir

DEV_MODEL_SMALL = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEV_MODEL_LARGE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"

# Biases on the tiny qwen's output layer make the step delimiter (alone and
# glued to a period) and EOS likely enough that short samples show every stop
# reason, while most tokens still continue a step.
TINY_QWEN_BIAS = {"\n\n": 1.5, ".\n\n": 1.5, "<|im_end|>": 1.0}


@pytest.fixture(scope="session")
def tiny_gguf_writer():
    """scripts/tiny_gguf.py as a module."""
    return tiny_gguf_module()


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_writer) -> Path:
    """A qwen2 GGUF with a byte-level BPE, ChatML control tokens and a chat template."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-qwen.gguf"
    return tiny_gguf_writer.write_qwen_like(path, seed=7, weight_scale=0.1, output_bias=TINY_QWEN_BIAS)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_writer) -> Path:
    """A llama GGUF with a SentencePiece vocabulary (BOS added) and a Llama-2 chat template."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    return tiny_gguf_writer.write_llama_like(path, seed=11, weight_scale=0.1)


def _dev_model(file: str) -> Path:
    path = models_dir() / file
    if not path.is_file():
        message = f"development model {path} is missing (scripts/fetch-dev-models.sh fetches it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def dev_model_small() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: sampling and scoring mechanics on a real model."""
    return _dev_model(DEV_MODEL_SMALL)


@pytest.fixture(scope="session")
def dev_model_large() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M: the smallest model that judges short statements."""
    return _dev_model(DEV_MODEL_LARGE)


@pytest.fixture
def open_model():
    """`open_model(path, **kwargs)`: a LlamaModel closed after the test.

    Flash attention is off unless asked for: llama.cpp's CPU flash-attention
    kernel rounds through f16, so its results move by 1e-4..1e-3 with how rows
    were batched, which would hide the exactness these tests check (batched
    equals one at a time, shared histories equal separate ones). One thread:
    tiny models gain nothing from more, and ggml's spinning thread pool makes
    each decode take up to hundreds of milliseconds on a busy machine."""
    from engines.llama import LlamaModel

    opened = []

    def open_(path: Path, **kwargs) -> LlamaModel:
        kwargs.setdefault("flash_attn", "off")
        kwargs.setdefault("n_threads", 1)
        model = LlamaModel(path, **kwargs)
        opened.append(model)
        return model

    yield open_
    for model in opened:
        model.close()
