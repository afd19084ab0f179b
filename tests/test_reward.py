"""Reward models on tiny GGUFs through real llama.cpp: formats, exact rewards
with cached prefixes, the cost of a candidate, and separate accounts."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from engines.base import EngineError, RewardQuery, SampleParams
from engines.llama import LlamaModel
from engines.reward import JUDGE_QUESTION, JUDGE_STATEMENT_PROMPT, JudgeReward, StepTagPRM, TokenPRM, build_reward

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = ("Tom starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.")
CANDIDATES = ("The answer is 7.", "The answer is 8.", "So he has 7 apples.")


@pytest.fixture(scope="module")
def roomy_qwen(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_writer) -> Path:
    """The tiny qwen with a 2048-token context: byte-level tokens make the judge's conversations long."""
    shape = tiny_gguf_writer.Shape(context_length=2048)
    path = tmp_path_factory.mktemp("roomy") / "roomy-qwen.gguf"
    return tiny_gguf_writer.write_qwen_like(path, shape=shape, seed=7, weight_scale=0.1)


def fresh_reward(reward, path: Path, open_model, question: str, steps: tuple[str, ...]) -> float:
    """The reward computed the plain way: a new context, the whole text decoded at once."""
    model = open_model(path, n_seq_max=2, name=reward.model.name)
    text = reward.prompt(question, steps)
    seq = model.start(text)
    logprobs, _ = model.next_token_logprobs([(seq, [])], reward._good + reward._bad)
    return reward._reward(logprobs[0])


@pytest.mark.parametrize(
    "make, family",
    [
        (TokenPRM, "tiny_llama"),
        (StepTagPRM, "tiny_llama"),
        (JudgeReward, "roomy_qwen"),
        (partial(JudgeReward, style="conversation"), "roomy_qwen"),
    ],
)
def test_cached_prefixes_give_the_plain_rewards(make, family: str, request, open_model) -> None:
    path: Path = request.getfixturevalue(family)
    model = open_model(path, n_seq_max=16)
    reward = make(model)
    steps: tuple[str, ...] = ()
    for accepted in STEPS + ("The answer is 7.",):
        queries = [RewardQuery(QUESTION, steps, c) for c in (accepted,) + CANDIDATES]
        rewards = reward.score(queries)
        assert all(0.0 < r < 1.0 for r in rewards)
        for q, r in zip(queries, rewards):
            expected = fresh_reward(reward, path, open_model, q.question, q.steps + (q.candidate,))
            assert r == pytest.approx(expected, abs=1e-4)
        steps += (accepted,)
    assert model.usage.decoded_rows == 0  # the reward keeps its own accounts
    assert reward.usage.decoded_rows > 0 and reward.usage.calls == len(STEPS) + 1


def test_a_candidate_costs_only_its_own_tokens(tiny_llama: Path, open_model) -> None:
    model = open_model(tiny_llama, n_seq_max=16)
    reward = TokenPRM(model)
    reward.score([RewardQuery(QUESTION, (), c) for c in (STEPS[0],) + CANDIDATES])
    # Next step: the accepted candidate's cached sequence is the new prefix.
    rows = reward.usage.decoded_rows
    queries = [RewardQuery(QUESTION, (STEPS[0],), c) for c in CANDIDATES]
    reward.score(queries)
    cached = model.prompt_tokens(reward.prompt(QUESTION, (STEPS[0],)))  # the accepted candidate's sequence
    conversations = [model.prompt_tokens(reward.prompt(QUESTION, (STEPS[0], c))) for c in CANDIDATES]
    assert all(c[: len(cached)] == cached for c in conversations)
    new_rows = {tuple(c[:i]) for c in conversations for i in range(len(cached) + 1, len(c) + 1)}
    assert reward.usage.decoded_rows - rows == len(new_rows)
    assert len(new_rows) < len(conversations[0])  # less than re-reading one conversation


def test_a_new_beam_borrows_the_shared_start_of_a_cached_one(roomy_qwen: Path, open_model) -> None:
    model = open_model(roomy_qwen, n_seq_max=16)
    judge = JudgeReward(model, style="conversation")
    judge.score([RewardQuery(QUESTION, (), c) for c in CANDIDATES])
    other = "Ann has 5 pens and buys 3 more. How many pens does she have?"
    rows = judge.usage.decoded_rows
    judge.score([RewardQuery(other, (), c) for c in CANDIDATES])
    before = model.prompt_tokens(judge.prompt(QUESTION, ("",)))
    conversations = [model.prompt_tokens(judge.prompt(other, (c,))) for c in CANDIDATES]
    shared = next(i for i, (a, b) in enumerate(zip(before, conversations[0])) if a != b)
    assert shared > 20  # the system prompt and the start of the user turn
    new_rows = {tuple(c[:i]) for c in conversations for i in range(shared + 1, len(c) + 1)}
    assert judge.usage.decoded_rows - rows == len(new_rows)
    assert model.live_sequences == len(CANDIDATES) + 1  # the new beam's prefix and its candidates


def test_formats(tiny_llama: Path, tiny_qwen: Path, open_model) -> None:
    llama, qwen = open_model(tiny_llama, n_seq_max=4), open_model(tiny_qwen, n_seq_max=4)
    steps = ("First step.\n\n", "Second step.")
    assert TokenPRM(llama).prompt("Q?", steps) == (
        "<s>[INST] Q? First step. [/INST] + </s><s>[INST] Second step. [/INST]"
    )
    assert StepTagPRM(llama).prompt("Q?", steps) == "Q? Step 1: First step. ки\nStep 2: Second step. ки"
    judge = JudgeReward(qwen)
    assert judge.prompt("Q?", steps) == JUDGE_STATEMENT_PROMPT.format(statement="Second step.")
    assert judge.prompt("Q?", steps).endswith("\n\nStatement: Second step.\nCorrect:")
    assert JudgeReward(qwen, style="conversation").prompt("Q?", steps) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nFirst step.\n\nSecond step.<|im_end|>\n"
        f"<|im_start|>user\n{JUDGE_QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [qwen.token_text(t) for t in judge._good] == ["Yes", "ĠYes", "yes"]
    assert [qwen.token_text(t) for t in judge._bad] == ["No", "ĠNo", "no"]


def test_the_judge_continues_a_policy_sequence_of_its_own_model(roomy_qwen: Path, open_model) -> None:
    model = open_model(roomy_qwen, n_seq_max=16)
    judge = JudgeReward(model, style="conversation")
    beam = model.start(model.format_chat(judge.system_prompt, QUESTION))
    drafts = model.sample([beam], 3, SampleParams(temperature=1.0, max_tokens=8, seed=1))[0]
    rows = judge.usage.decoded_rows
    rewards = judge.score([RewardQuery(QUESTION, (), d.text, policy_seq=d.seq) for d in drafts])
    # Each candidate: its own undecoded last token plus the judge's question.
    assert judge.usage.decoded_rows - rows == 3 * (1 + len(judge._after_solution))
    for d, r in zip(drafts, rewards):
        fresh = open_model(roomy_qwen, n_seq_max=2)
        seq = fresh.start(list(d.seq.tokens) + judge._after_solution)
        logprobs, _ = fresh.next_token_logprobs([(seq, [])], judge._good + judge._bad)
        assert r == pytest.approx(judge._reward(logprobs[0]), abs=1e-4)
    assert model.live_sequences == 1 + 3  # the judge released what it forked
    # The statement style reads the step's text instead.
    statement = JudgeReward(model)
    statement.score([RewardQuery(QUESTION, (), d.text, policy_seq=d.seq) for d in drafts])
    prompts = [model.prompt_tokens(statement.prompt(QUESTION, (d.text,))) for d in drafts]
    assert statement.usage.decoded_rows == len({tuple(p[:i]) for p in prompts for i in range(1, len(p) + 1)})


def test_reset_forgets_cached_prefixes(tiny_llama: Path, open_model) -> None:
    model = open_model(tiny_llama, n_seq_max=16)
    reward = StepTagPRM(model)
    reward.score([RewardQuery(QUESTION, (), c) for c in CANDIDATES])
    assert model.live_sequences > 0
    reward.reset()
    assert model.live_sequences == 0


def test_reward_kinds_and_refusals(tiny_gguf_writer, tiny_qwen: Path, tmp_path: Path, open_model) -> None:
    model: LlamaModel = open_model(tiny_qwen, n_seq_max=4)
    assert isinstance(build_reward("judge", model), JudgeReward)
    assert isinstance(build_reward("token-prm", model), TokenPRM)
    assert isinstance(build_reward("step-tag-prm", model), StepTagPRM)
    assert build_reward("judge", model).name == "judge:tiny-qwen"
    with pytest.raises(EngineError, match="unknown reward kind 'vibes'"):
        build_reward("vibes", model)
    with pytest.raises(ValueError, match="style must be"):
        JudgeReward(model, style="vibes")
    plain_merges = [pair for pair in tiny_gguf_writer.QWEN_MERGES if "es" not in pair and "o" not in pair[1]]
    no_words_path = tiny_gguf_writer.write_qwen_like(tmp_path / "nowords.gguf", merge_pairs=plain_merges)
    no_words = open_model(no_words_path, n_seq_max=2)
    with pytest.raises(EngineError, match="has no single-token Yes/No answers"):
        JudgeReward(no_words)
    assert np.isfinite(TokenPRM(no_words)._reward(np.array([-1.0, -2.0])))
