"""Hidden states from the decodes the search already makes: the state at the row
that predicts a scored or sampled step's last token, as a plain decode of the
whole text gives it; and nothing else changes when they are on."""

from __future__ import annotations

from pathlib import Path

import llama_cpp as L
import numpy as np
import pytest

from engines.base import SampleParams
from engines.llama import LlamaModel


def reference_state(path: Path, tokens: list[int]) -> np.ndarray:
    """The final hidden state after `tokens` (the row whose input is the last
    of them), from one plain decode in a fresh context with embeddings on."""
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_seq_max = 512, 512, 1
    params.embeddings = True
    params.flash_attn_type = 0  # off, as the engine's tests open models
    ctx = L.llama_init_from_model(model, params)
    try:
        ids = (L.llama_token * len(tokens))(*tokens)  # kept alive while the batch points at it
        batch = L.llama_batch_get_one(ids, len(tokens))
        assert L.llama_decode(ctx, batch) == 0
        width = L.llama_model_n_embd_out(model)
        return np.ctypeslib.as_array(L.llama_get_embeddings_ith(ctx, -1), shape=(width,)).copy()
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


def _prompt(model: LlamaModel) -> list[int]:
    return model.prompt_tokens(model.format_chat("Answer briefly.", "What is 12 + 30?"))


def test_scored_states_are_those_of_a_plain_decode(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=16, hidden_states=True)
    beam = model.start(_prompt(model))
    model.extend(beam, [60, 61])  # an undecoded tail, as after an accepted step
    candidates = [[70, 71, 72], [70, 71, 80, 81], [90, 91]]
    results = model.score([(beam, c) for c in candidates])
    for candidate, result in zip(candidates, results):
        assert result.hidden is not None and len(result.hidden) == model.n_embd
        expected = reference_state(tiny_qwen, list(beam.tokens) + candidate[:-1])
        np.testing.assert_allclose(result.hidden, expected, atol=1e-4)


def test_sampled_states_are_those_of_the_row_before_the_last_token(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=16, hidden_states=True)
    beam = model.start(_prompt(model))
    groups = model.sample([beam], 3, SampleParams(temperature=0.8, max_tokens=6, seed=3, delimiter=None))
    for sampled in groups[0]:
        assert len(sampled.tokens) >= 2
        expected = reference_state(tiny_qwen, list(beam.tokens) + sampled.tokens[:-1])
        assert sampled.hidden is not None
        np.testing.assert_allclose(sampled.hidden, expected, atol=1e-4)


@pytest.mark.parametrize("share", [True, False])
def test_hidden_states_change_no_token_and_no_logprob(tiny_qwen: Path, open_model, share: bool) -> None:
    plain = open_model(tiny_qwen, n_seq_max=16, share_histories=share)
    with_states = open_model(tiny_qwen, n_seq_max=16, share_histories=share, hidden_states=True)
    params = SampleParams(temperature=0.9, max_tokens=12, seed=5, delimiter="\n\n")
    outs = []
    for model in (plain, with_states):
        beam = model.start(_prompt(model))
        [group] = model.sample([beam], 4, params)
        scored = model.score([(beam, s.tokens) for s in group])
        outs.append(([s.tokens for s in group], [s.logprobs for s in group], [r.logprobs for r in scored]))
        assert all((s.hidden is None) == (model is plain) for s in group)
    assert outs[0][0] == outs[1][0]
    np.testing.assert_allclose(np.concatenate(outs[0][1]), np.concatenate(outs[1][1]), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(outs[0][2]), np.concatenate(outs[1][2]), atol=1e-4)


def test_a_one_token_candidate_after_a_prefilled_prompt_has_no_state(tiny_qwen: Path, open_model) -> None:
    # Its state is the prompt's last row, which prefill never computes with states on.
    model = open_model(tiny_qwen, n_seq_max=4, hidden_states=True)
    beam = model.start(_prompt(model))
    [result] = model.score([(beam, [70])])
    assert result.hidden is None
