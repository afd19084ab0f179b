"""Rewards over vLLM: the text rewards on a RemoteModel give what they give
in process, and a PRM served for pooling is read at its step tags."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from fakevllm import FakeVLLM

from engines.base import RewardQuery, ServerError
from engines.remote.client import RetryPolicy, ServerPool
from engines.remote.model import RemoteModel
from engines.remote.reward import PooledPRM
from engines.reward import JudgeReward, StepTagPRM, TokenPRM

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = ("Tom starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.")
CANDIDATES = ("The answer is 7.", "The answer is 8.")
QUICK = RetryPolicy(attempts=2, backoff_s=0.001, timeout_s=20)


@pytest.fixture(scope="module")
def roomy_qwen(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_writer) -> Path:
    shape = tiny_gguf_writer.Shape(context_length=2048)
    path = tmp_path_factory.mktemp("roomy") / "roomy-qwen.gguf"
    return tiny_gguf_writer.write_qwen_like(path, shape=shape, seed=7, weight_scale=0.1)


@pytest.mark.parametrize(
    "make, family",
    [
        (TokenPRM, "tiny_llama"),  # a SentencePiece vocabulary with BOS: written once
        (StepTagPRM, "tiny_llama"),
        (JudgeReward, "roomy_qwen"),
        (partial(JudgeReward, style="conversation"), "roomy_qwen"),
    ],
)
def test_text_rewards_on_a_server_equal_the_local_ones(make, family: str, request, open_model) -> None:
    path: Path = request.getfixturevalue(family)
    local = make(open_model(path, n_seq_max=16))
    with FakeVLLM(open_model(path, n_seq_max=16), served=["prm"]) as fake:
        served = RemoteModel(ServerPool([fake.url], policy=QUICK), "prm", top_logprobs=3)
        remote = make(served)
        steps: tuple[str, ...] = ()
        for accepted in STEPS:
            queries = [RewardQuery(QUESTION, steps, c) for c in (accepted, *CANDIDATES)]
            assert remote.score(queries) == pytest.approx(local.score(queries), abs=1e-3)
            steps += (accepted,)
        # The reward keeps its own accounts; the model's hold only the text round trips.
        assert remote.usage.prefilled > 0 and (served.usage.prefilled, served.usage.generated) == (0, 0)
        completions = [b for p, b in fake.log if p == "/v1/completions" and b]
        assert completions and all(b["max_tokens"] == 1 for b in completions)


def tag_rewards(tag: int, tokens: list[int]) -> list[list[float]]:
    """A scripted PRM: the n-th step tag of an input gets P(good) = 1 / (n + 1)."""
    rows = []
    for n, _ in enumerate(t for t in tokens if t == tag):
        good = 1 / (n + 2)
        rows.append([1 - good, good])
    return rows


def test_a_pooled_prm_reads_the_good_class_at_the_newest_step_tag(tiny_qwen, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8)
    [tag] = model.tokenize("<extra_0>")
    with FakeVLLM(model, served=["prm"], pooling=partial(tag_rewards, tag)) as fake:
        reward = PooledPRM(RemoteModel(ServerPool([fake.url], policy=QUICK), "prm"))
        queries = [RewardQuery(QUESTION, (), "Step one."), RewardQuery(QUESTION, STEPS, "The answer is 7.")]
        assert reward.score(queries) == pytest.approx([1 / 2, 1 / 4])
        pooled = [b for p, b in fake.log if p == "/pooling" and b]
        assert [b["task"] for b in pooled] == ["token_classify"] * 2
        [text] = [t for t in (fake._text(b["input"]) for b in pooled) if "The answer is 7." in t]
        assert text.endswith("The answer is 7.<extra_0><|im_end|>\n")
        assert "He buys 4 more, so 3 + 4 = 7.<extra_0>" in text and QUESTION in text
    assert reward.name == "pooled-prm:prm"


def test_a_pooled_prm_with_a_row_per_token_is_read_at_its_tags(tiny_qwen, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8)
    [tag] = model.tokenize("<extra_0>")

    def every_token(tokens: list[int]) -> list[list[float]]:
        return [[0.1, 0.9] if t == tag else [0.5, 0.5] for t in tokens]

    with FakeVLLM(model, served=["prm"], pooling=every_token) as fake:
        reward = PooledPRM(RemoteModel(ServerPool([fake.url], policy=QUICK), "prm"))
        assert reward.score([RewardQuery(QUESTION, STEPS, "So 7.")]) == pytest.approx([0.9])


def test_a_generating_server_is_no_pooled_prm(tiny_qwen, open_model) -> None:
    with FakeVLLM(open_model(tiny_qwen, n_seq_max=8), served=["prm"]) as fake:
        reward = PooledPRM(RemoteModel(ServerPool([fake.url], policy=QUICK), "prm"))
        with pytest.raises(ServerError, match="does not support Pooling API"):
            reward.score([RewardQuery(QUESTION, (), "Step one.")])
