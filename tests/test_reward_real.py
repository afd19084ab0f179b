"""The judge on the real 1.5B development model, on statements it demonstrably
gets right (the 0.5B cannot judge; see shared/research/dev-models.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import RewardQuery
from engines.llama import LlamaModel
from engines.reward import JudgeReward

pytestmark = pytest.mark.real

OBVIOUS = [
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("What is 9 * 2?", "9 * 2 = 18.", "9 * 2 = 16."),
    ("What is the capital of France?", "Paris is the capital of France.", "Berlin is the capital of France."),
]


def test_the_judge_prefers_a_correct_step_to_a_plainly_wrong_one(dev_model_large: Path) -> None:
    with LlamaModel(dev_model_large, n_ctx=1024, n_seq_max=8) as model:
        judge = JudgeReward(model)
        for question, right, wrong in OBVIOUS:
            good, bad = judge.score([RewardQuery(question, (), right), RewardQuery(question, (), wrong)])
            assert good > 0.8 and good > bad + 0.2, (question, good, bad)
        assert model.usage.decoded_rows == 0 and judge.usage.decoded_rows > 0
