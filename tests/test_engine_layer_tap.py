"""Hidden states of a chosen layer (`hidden_layer`), read through llama.cpp's
eval callback in the decodes the search already makes: the right rows, however
the rows were batched, and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.base import ModelLoadError, SampleParams
from engines.llama import LlamaModel

TINY_LAYERS = 2  # scripts/tiny_gguf.py's qwen-like default
RMS_EPS = 1e-6  # and its norm epsilon; its output norm's weights are ones


def _prompt(model: LlamaModel) -> list[int]:
    return model.prompt_tokens(model.format_chat("Answer briefly.", "What is 12 + 30?"))


CANDIDATES = [[70, 71, 72], [70, 71, 80, 81], [90, 91], [100, 101, 102, 103, 104, 105]]


def _scored_states(model: LlamaModel, candidates: list[list[int]]) -> list[np.ndarray]:
    beam = model.start(_prompt(model))
    model.extend(beam, [60, 61])  # an undecoded tail, as after an accepted step
    results = model.score([(beam, c) for c in candidates])
    states = []
    for result in results:
        assert result.hidden is not None and len(result.hidden) == model.n_embd
        states.append(np.array(result.hidden))
        model.release(result.seq)
    model.release(beam)
    return states


def test_the_last_layers_output_normed_is_the_final_state(tiny_qwen: Path, open_model) -> None:
    # The final state is the last layer's output after the output norm (RMS, unit
    # weights here): the tap reads the same rows as llama.cpp's embeddings.
    final = _scored_states(open_model(tiny_qwen, n_seq_max=16, hidden_states=True), CANDIDATES)
    last = _scored_states(
        open_model(tiny_qwen, n_seq_max=16, hidden_states=True, hidden_layer=TINY_LAYERS - 1), CANDIDATES
    )
    for f, h in zip(final, last, strict=True):
        assert not np.allclose(f, h, atol=1e-3)  # not the same tensor
        np.testing.assert_allclose(f, h / np.sqrt(np.mean(h * h) + RMS_EPS), atol=1e-4)


def test_layer_states_do_not_depend_on_batching(tiny_qwen: Path, open_model) -> None:
    together = _scored_states(open_model(tiny_qwen, n_seq_max=16, hidden_states=True, hidden_layer=0), CANDIDATES)
    # Decodes of 3 rows: every candidate crosses chunks, and one at a time.
    chunked = open_model(tiny_qwen, n_seq_max=16, n_batch=3, hidden_states=True, hidden_layer=0)
    for candidate, state in zip(CANDIDATES, together, strict=True):
        [alone] = _scored_states(chunked, [candidate])
        np.testing.assert_allclose(alone, state, atol=1e-5)
    # A middle layer is its own state, not the final one.
    final = _scored_states(open_model(tiny_qwen, n_seq_max=16, hidden_states=True), CANDIDATES)
    assert not np.allclose(final[0], together[0], atol=1e-2)


def test_sampled_states_are_the_teacher_forced_ones(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=16, hidden_states=True, hidden_layer=0)
    beam = model.start(_prompt(model))
    groups = model.sample([beam], 3, SampleParams(temperature=0.8, max_tokens=6, seed=3, delimiter=None))
    fresh = open_model(tiny_qwen, n_seq_max=16, hidden_states=True, hidden_layer=0)
    root = fresh.start(_prompt(fresh))
    for sampled in groups[0]:
        assert sampled.hidden is not None and len(sampled.tokens) >= 2
        [scored] = fresh.score([(root, sampled.tokens)])
        assert scored.hidden is not None
        np.testing.assert_allclose(sampled.hidden, scored.hidden, atol=1e-5)


def test_the_tap_changes_no_token_and_no_logprob(tiny_qwen: Path, open_model) -> None:
    params = SampleParams(temperature=0.9, max_tokens=12, seed=5, delimiter="\n\n")
    outs = []
    for model in (
        open_model(tiny_qwen, n_seq_max=16),
        open_model(tiny_qwen, n_seq_max=16, hidden_states=True, hidden_layer=0),
    ):
        beam = model.start(_prompt(model))
        [group] = model.sample([beam], 4, params)
        scored = model.score([(beam, s.tokens) for s in group])
        outs.append(([s.tokens for s in group], [s.logprobs for s in group], [r.logprobs for r in scored]))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_allclose(np.concatenate(outs[0][1]), np.concatenate(outs[1][1]), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(outs[0][2]), np.concatenate(outs[1][2]), atol=1e-4)


def test_a_layer_the_model_does_not_have_is_one_sentence(tiny_qwen: Path, open_model) -> None:
    with pytest.raises(ModelLoadError, match=f"layers 0 to {TINY_LAYERS - 1}, so .* layer {TINY_LAYERS}"):
        open_model(tiny_qwen, hidden_states=True, hidden_layer=TINY_LAYERS)


def test_without_hidden_states_the_layer_is_ignored(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=4, hidden_layer=0)
    assert model.hidden_layer is None
    beam = model.start(_prompt(model))
    [result] = model.score([(beam, [70, 71])])
    assert result.hidden is None
