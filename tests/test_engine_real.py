"""The engine on the real 0.5B development model (a handful of short generations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.base import SYSTEM_PROMPT, SampleParams, StopReason
from engines.llama import LlamaModel
from engines.vocab import check_vocab_files

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def small(dev_model_small: Path):
    with LlamaModel(dev_model_small, n_ctx=1024, n_seq_max=8) as model:
        yield model


def test_a_greedy_step_on_a_math_prompt_stops_at_the_delimiter(small: LlamaModel) -> None:
    beam = small.start(small.format_chat(SYSTEM_PROMPT, "What is 12 + 30?"))
    steps = []
    for _ in range(6):  # a few greedy steps reach the boxed answer
        [[step]] = small.sample([beam], 1, SampleParams(temperature=0, max_tokens=96))
        steps.append(step)
        small.release(beam)
        beam = step.seq
        if step.stop is not StopReason.DELIMITER or "boxed" in step.text:
            break
    first = steps[0]
    assert first.stop is StopReason.DELIMITER and first.text.endswith("\n\n")
    assert first.text.count("\n\n") == 1 and len(first.tokens) < 96
    solution = "".join(s.text for s in steps)
    assert "12" in solution and "30" in solution and "\\boxed{42}" in solution
    assert all(lp <= 0 for s in steps for lp in s.logprobs)
    small.release(beam)


def test_candidates_of_one_beam_share_rows_on_a_real_model(small: LlamaModel) -> None:
    beam = small.start(small.format_chat(SYSTEM_PROMPT, "What is 7 * 6?"))
    rows = small.usage.decoded_rows
    [drafts] = small.sample([beam], 4, SampleParams(temperature=0.2, max_tokens=24, seed=1))
    distinct = {tuple(d.tokens[:n]) for d in drafts for n in range(1, len(d.tokens))}
    assert small.usage.decoded_rows - rows == len(distinct)
    assert len(distinct) < sum(len(d.tokens) - 1 for d in drafts)
    for d in drafts:
        small.release(d.seq)
    small.release(beam)


def test_shared_rows_give_the_logprobs_of_decoding_one_sequence_alone(small: LlamaModel) -> None:
    beam = small.start(small.format_chat(SYSTEM_PROMPT, "What is 7 * 6?"))
    [drafts] = small.sample([beam], 4, SampleParams(temperature=0.2, max_tokens=16, seed=1))
    for draft in drafts[:2]:
        alone, reference = small.fork(beam), []
        for token in draft.tokens:  # one row per decode, one sequence
            logprobs, [after] = small.next_token_logprobs([(alone, [])], [token])
            reference.append(logprobs[0, 0])
            small.release(after)
            small.extend(alone, [token])
        np.testing.assert_allclose(draft.logprobs, reference, atol=1e-4)
        small.release(alone)
    for d in drafts:
        small.release(d.seq)
    small.release(beam)


def test_the_development_models_share_a_vocabulary(dev_model_small: Path, dev_model_large: Path) -> None:
    check_vocab_files(dev_model_small, dev_model_large)
