"""The scripted engine: the test double every search test stands on."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from engines.base import (
    Cancelled,
    ContextFullError,
    EngineError,
    LanguageModel,
    RewardModel,
    RewardQuery,
    SampleParams,
    SequencePoolExhausted,
    StopReason,
)
from engines.testing.scripted import (
    ARITHMETIC_QUESTION,
    Continuation,
    FakeClock,
    ScriptedModel,
    ScriptedReward,
    last_step,
    scripted_engines,
)

# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}

STEP_A = "Alpha one.\n\n"
STEP_B = "Beta two.\n\n"
STEP_C = "Gamma three.\n\n"
SCRIPT = {
    "": (Continuation(STEP_A, math.log(0.5)), Continuation(STEP_B, math.log(0.3)), Continuation(STEP_C, math.log(0.2))),
    STEP_A: (Continuation("Done \\boxed{1}.", -0.5, eos=True),),
}


def chi_square(observed: Counter, expected: dict[str, float]) -> float:
    return sum((observed[key] - e) ** 2 / e for key, e in expected.items())


def protocol_members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")} | set(protocol.__annotations__)


def test_scripted_classes_have_every_protocol_member() -> None:
    engines = scripted_engines()
    for name in protocol_members(LanguageModel):
        assert hasattr(engines.draft, name), name
    for name in protocol_members(RewardModel):
        assert hasattr(engines.reward, name), name


def test_last_step_is_the_script_state() -> None:
    assert last_step("") == ""
    assert last_step("a\n\n") == "a\n\n"
    assert last_step("a\n\nb\n\n") == "b\n\n"
    assert last_step("a\n\nb") == "b"


def test_tokenize_round_trips_and_is_shared_between_models() -> None:
    one, two = ScriptedModel("one", {}), ScriptedModel("two", {})
    text = "First add the tens: 10 + 30 = 40.\n\n"
    assert one.detokenize(one.tokenize(text)) == text
    assert one.tokenize(text) == two.tokenize(text)
    assert len(one.tokenize("a b\n\nc")) == 5  # a, " ", b, "\n\n", c


def test_sampling_frequencies_follow_the_script_probabilities() -> None:
    model = ScriptedModel("m", SCRIPT, n_seq_max=4000)
    root = model.start(model.format_chat("sys", "q"))
    drafts = model.sample([root], 3000, SampleParams(temperature=1.0, seed=7))[0]
    counts = Counter(d.text for d in drafts)
    expected = {STEP_A: 1500.0, STEP_B: 900.0, STEP_C: 600.0}
    assert chi_square(counts, expected) < CHI2_CRITICAL[2]
    for draft in drafts:
        model.release(draft.seq)
    model.release(root)
    assert model.live == 0


def test_temperature_sharpens_and_zero_is_argmax() -> None:
    model = ScriptedModel("m", SCRIPT, n_seq_max=4000)
    root = model.start("")
    cold = model.sample([root], 2000, SampleParams(temperature=0.5, seed=3))[0]
    share_a = sum(d.text == STEP_A for d in cold) / len(cold)
    # p_A ∝ 0.5^2 = 0.25 vs 0.09 and 0.04: 0.657
    assert abs(share_a - 0.25 / 0.38) < 0.04
    greedy = model.sample([root], 5, SampleParams(temperature=0.0, seed=3))[0]
    assert {d.text for d in greedy} == {STEP_A}


def test_sampling_is_deterministic_per_seed_and_candidate() -> None:
    model = ScriptedModel("m", SCRIPT)
    root = model.start("")
    first = [d.text for d in model.sample([root], 8, SampleParams(temperature=1.0, seed=11))[0]]
    again = [d.text for d in model.sample([root], 8, SampleParams(temperature=1.0, seed=11))[0]]
    other = [d.text for d in model.sample([root], 8, SampleParams(temperature=1.0, seed=12))[0]]
    assert first == again
    assert first != other


def test_stop_reasons_and_logprobs() -> None:
    model = ScriptedModel("m", SCRIPT)
    root = model.start("")
    step = model.sample([root], 1, SampleParams(temperature=0.0))[0][0]
    assert step.stop is StopReason.DELIMITER and step.text == STEP_A
    assert sum(step.logprobs) == pytest.approx(math.log(0.5))
    assert len(step.logprobs) == len(step.tokens) == step.seq.n_tokens - root.n_tokens
    # Without a delimiter it goes on to the end of the answer.
    whole = model.sample([root], 1, SampleParams(temperature=0.0, delimiter=None))[0][0]
    assert whole.stop is StopReason.EOS and whole.text == STEP_A + "Done \\boxed{1}."
    capped = model.sample([root], 1, SampleParams(temperature=0.0, max_tokens=2))[0][0]
    assert capped.stop is StopReason.LENGTH and capped.text == "Alpha "
    # An unknown context ends at once.
    lost = model.start("nothing here")
    ended = model.sample([lost], 1, SampleParams())[0][0]
    assert ended.stop is StopReason.EOS and ended.text == ""


def test_score_agrees_with_sampling_and_penalises_unknown_text() -> None:
    model = ScriptedModel("m", SCRIPT, unknown_logprob=-4.0)
    root = model.start("")
    sampled = model.sample([root], 1, SampleParams(temperature=0.0, delimiter=None))[0][0]
    scored = model.score([(root, sampled.tokens)])[0]
    assert scored.logprobs == pytest.approx(sampled.logprobs)
    assert scored.seq.n_tokens == root.n_tokens + len(sampled.tokens)
    odd = model.score([(root, model.tokenize("Zeta x"))])[0]
    assert odd.logprobs == [-4.0, -4.0, -4.0]


def test_sequences_are_owned_counted_and_pooled() -> None:
    model = ScriptedModel("m", SCRIPT, n_seq_max=3)
    root = model.start("")
    child = model.fork(root)
    model.extend(child, model.tokenize(STEP_A))
    assert child.n_tokens == root.n_tokens + 4  # "Alpha", " ", "one.", "\n\n"
    model.truncate(child, root.n_tokens)
    assert child.n_tokens == root.n_tokens
    assert model.live == 2
    model.fork(root)
    with pytest.raises(SequencePoolExhausted):
        model.fork(root)
    model.release(child)
    with pytest.raises(EngineError):
        model.release(child)
    assert model.live == 2 and model.peak_live == 3


def test_context_limits_raise_context_full() -> None:
    model = ScriptedModel("m", SCRIPT, n_ctx=6)
    with pytest.raises(ContextFullError, match="9 tokens do not fit the context of 6 tokens"):
        model.start("one two three four five")
    root = model.start("")
    # The whole answer is 8 tokens: the context fills up while sampling.
    with pytest.raises(ContextFullError):
        model.sample([root], 2, SampleParams(delimiter=None))
    assert model.live == 1  # the forks of the failed call were released


def test_should_stop_cancels_and_releases_the_call_sequences() -> None:
    model = ScriptedModel("m", SCRIPT)
    root = model.start("")
    seen: list[list[list[str]]] = []
    with pytest.raises(Cancelled):
        model.sample([root], 4, SampleParams(), progress=seen.append, should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2 and all(len(group) == 4 for group in seen[0])
    assert model.live == 1
    with pytest.raises(Cancelled):
        model.score([(root, [1])], should_stop=lambda: True)


def test_progress_reports_growing_texts_per_input_sequence() -> None:
    model = ScriptedModel("m", SCRIPT)
    first, second = model.start(""), model.start(STEP_A)
    seen: list[list[list[str]]] = []
    model.sample([first, second], 2, SampleParams(temperature=0.0), progress=seen.append)
    assert [len(groups) for groups in seen] == [2] * len(seen)
    assert seen[-1][0] == [STEP_A, STEP_A]
    assert seen[0][0][0] == "Alpha"


def test_fake_clock_and_usage_are_exact() -> None:
    clock = FakeClock()
    model = ScriptedModel("m", SCRIPT, clock=clock, seconds_per_token=0.5, seconds_per_prefill_token=0.25)
    prompt = model.format_chat("sys", "q")
    root = model.start(prompt)
    prefill = len(model.tokenize(prompt))
    assert clock() == pytest.approx(prefill * 0.25)
    model.sample([root], 2, SampleParams(temperature=0.0))  # STEP_A: 4 tokens, one batched step each
    assert clock() == pytest.approx(prefill * 0.25 + 4 * 0.5)
    assert model.usage.generated == 8 and model.usage.prefilled == prefill
    assert model.usage.seconds == pytest.approx(clock())


def test_scripted_reward_looks_up_steps() -> None:
    reward = ScriptedReward("r", {"good step": 0.9}, default=0.3)
    queries = [RewardQuery("q", (), "good step\n\n"), RewardQuery("q", (), "other")]
    assert reward.score(queries) == [0.9, 0.3]
    judge = ScriptedReward("f", lambda q: len(q.steps) / 10)
    assert judge.score([RewardQuery("q", ("a", "b"), "c")]) == [0.2]
    with pytest.raises(Cancelled):
        reward.score(queries, should_stop=lambda: True)


def test_arithmetic_engines_share_one_clock() -> None:
    engines = scripted_engines()
    assert engines.draft is not None
    assert engines.draft.clock is engines.target.clock is engines.reward.clock is engines.clock
    assert "12 + 30" in ARITHMETIC_QUESTION
    assert scripted_engines(draft=None).draft is None


def test_a_sample_call_beyond_the_pool_fails_without_keeping_any_fork() -> None:
    model = ScriptedModel("m", SCRIPT, n_seq_max=4)
    root = model.start("")
    with pytest.raises(SequencePoolExhausted):
        model.sample([root], 4, SampleParams())
    assert model.live == 1
