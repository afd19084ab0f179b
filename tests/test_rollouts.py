"""Rollouts for head training and the forced answer box, on scripted models."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.eval.datasets import Problem
from app.eval.rollouts import RolloutPlan, read_rollouts, sample_rollouts
from app.search.forced import ANSWER_CUE, force_answer
from engines.testing.scripted import Continuation, ScriptedModel

UNBOXED = {
    "": (Continuation("Add 12 and 30.\n\n", -0.1),),
    "Add 12 and 30.\n\n": (Continuation("So, 12 + 30 equals 42.", -0.1, eos=True),),
    "The final answer is $\\boxed{": (Continuation("42}$.", -0.1),),
}
BOXED = {
    "": (Continuation("Add 12 and 30.\n\n", -0.1), Continuation("Subtract.\n\n", -0.5)),
    "Add 12 and 30.\n\n": (Continuation("The answer is \\boxed{42}.", -0.1, eos=True),),
    "Subtract.\n\n": (Continuation("The answer is \\boxed{-18}.", -0.1, eos=True),),
}
FRACTION = {"The final answer is $\\boxed{": (Continuation("\\frac{1}{2}}$", -0.1),)}


def test_forced_answer_reads_the_box_and_leaves_the_sequence_alone() -> None:
    model = ScriptedModel("m", UNBOXED)
    seq = model.start(model.format_chat("", "What is 12 + 30?"))
    [[step]] = model.sample([seq], 1, _greedy())
    [[last]] = model.sample([step.seq], 1, _greedy())
    before = last.seq.n_tokens
    forced = force_answer(model, last.seq)
    assert forced.answer == "42"
    assert forced.text == ANSWER_CUE + "42}$."
    assert forced.tokens > 0
    assert last.seq.n_tokens == before
    for s in (seq, step.seq, last.seq):
        model.release(s)
    assert model.live == 0


def test_forced_answer_closes_nested_braces() -> None:
    model = ScriptedModel("m", FRACTION)
    seq = model.start("solution")
    forced = force_answer(model, seq)
    assert forced.answer == "\\frac{1}{2}"
    model.release(seq)
    assert model.live == 0


def test_forced_answer_without_a_box_is_none() -> None:
    model = ScriptedModel("m", {})  # the script knows nothing: EOS at once
    seq = model.start("solution")
    assert force_answer(model, seq).answer is None
    model.release(seq)
    assert model.live == 0


def _greedy():
    from engines.base import SampleParams

    return SampleParams(temperature=0.0, max_tokens=64)


def test_rollouts_are_graded_forced_and_resumed(tmp_path: Path) -> None:
    problems = [Problem("a", "What is 12 + 30?", "42"), Problem("b", "What is 12 + 30?", "41")]
    path = tmp_path / "rollouts.jsonl"
    model = ScriptedModel("m", UNBOXED)
    plan = RolloutPlan("target", 0.7, 2)
    batches = list(sample_rollouts(model, problems, plan, path))
    assert [len(b) for b in batches] == [2, 2]
    rollouts = read_rollouts(path)
    assert [(r.problem, r.correct, r.answer_forced) for r in rollouts] == [
        ("a", True, True),
        ("a", True, True),
        ("b", False, True),
        ("b", False, True),
    ]
    assert rollouts[0].steps == ["Add 12 and 30.\n\n", "So, 12 + 30 equals 42."]
    # The tokens are the step's text (the last one with its EOS token).
    assert [model.detokenize(t)[: len(s)] for t, s in zip(rollouts[0].step_tokens, rollouts[0].steps)] == rollouts[
        0
    ].steps
    assert model.live == 0
    # A crash mid-write leaves a cut line: it is dropped and that problem sampled again.
    data = path.read_text()
    path.write_text(data + data.splitlines()[0][:20])
    assert len(read_rollouts(path)) == 4
    assert list(sample_rollouts(model, problems, plan, path)) == []
    assert path.read_text() == data


def test_rollouts_follow_the_sampling_distribution(tmp_path: Path) -> None:
    problems = [Problem(f"p{i}", "q", "42") for i in range(40)]
    path = tmp_path / "r.jsonl"
    model = ScriptedModel("m", BOXED)
    list(sample_rollouts(model, problems, RolloutPlan("draft", 1.0, 2), path))
    rollouts = read_rollouts(path)
    right = sum(r.correct for r in rollouts) / len(rollouts)
    # exp(-0.1) / (exp(-0.1) + exp(-0.5)) = 0.599
    assert right == pytest.approx(0.599, abs=0.12)
    assert all(not r.answer_forced and r.stop in ("eos", "answer") for r in rollouts)
