"""Rollouts for training a value head: whole solutions sampled step by step in
the search's own format, graded, kept on disk.

A rollout is what one model writes for one problem at one temperature:
steps cut at the step delimiter (as the search cuts them), at most
`max_steps` of them, the last one written to the end. Its label is whether
its final answer is right; every prefix of it inherits that label, which is
the value the search wants a reward to estimate (the chance that a prefix
ends well). Solutions without a box get one forced (`app.search.forced`), as
the search does.

Sampling is the expensive part of training, so rollouts are appended to a
JSON Lines file as each problem finishes, and a rerun skips what is there.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.eval.datasets import Problem
from app.eval.grading import grade_answer
from app.search.answer import last_boxed
from app.search.forced import force_answer
from engines.base import SYSTEM_PROMPT, LanguageModel, SampleParams, Seq, StopFn, StopReason


@dataclass(frozen=True)
class RolloutPlan:
    """Which rollouts to sample for every problem."""

    source: str  # "draft" | "target": the role that writes them
    temperature: float
    samples: int
    max_steps: int = 12
    max_step_tokens: int = 160
    seed: int = 0
    # Only every `every`-th problem (by position): a slow model writes for fewer.
    every: int = 1

    def applies(self, index: int) -> bool:
        return index % self.every == 0

    @property
    def key(self) -> str:
        return f"{self.source}@{self.temperature:g}"


@dataclass(frozen=True)
class Rollout:
    problem: str  # Problem.id
    plan: str  # RolloutPlan.key
    sample: int
    steps: list[str]
    step_tokens: list[list[int]]
    answer: str | None
    answer_forced: bool
    correct: bool
    stop: str  # why the last step ended: eos, length, answer, steps

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Rollout:
        return cls(**json.loads(line))


def read_rollouts(path: Path) -> list[Rollout]:
    """The whole rollouts of `path`; a last line cut by a crash is dropped."""
    if not path.exists():
        return []
    rollouts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # cut mid-write: sampled again on resume
            rollouts.append(Rollout.from_json(line))
    return rollouts


def sample_rollouts(
    model: LanguageModel,
    problems: Sequence[Problem],
    plan: RolloutPlan,
    path: Path,
    *,
    on_problem: Callable[[Problem, list[Rollout]], None] = lambda problem, rollouts: None,
    should_stop: StopFn | None = None,
) -> Iterator[list[Rollout]]:
    """Sample `plan` for every problem without its rollouts in `path`, appending
    each problem's rollouts (all samples) once they are all done."""
    done = {(r.problem, r.plan) for r in read_rollouts(path)}
    _drop_cut_line(path)
    for problem in problems:
        if (problem.id, plan.key) in done:
            continue
        rollouts = _problem_rollouts(model, problem, plan, should_stop)
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(r.to_json() + "\n" for r in rollouts))
            f.flush()
            os.fsync(f.fileno())
        on_problem(problem, rollouts)
        yield rollouts


def _drop_cut_line(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _problem_rollouts(
    model: LanguageModel, problem: Problem, plan: RolloutPlan, should_stop: StopFn | None
) -> list[Rollout]:
    root = model.start(model.format_chat(SYSTEM_PROMPT, problem.problem))
    try:
        seed = zlib.crc32(f"{problem.id}/{plan.key}/{plan.seed}".encode())
        written = _write_on(model, root, plan.samples, plan, plan.max_steps, seed, should_stop)
    finally:
        model.release(root)
    return [
        Rollout(
            problem=problem.id,
            plan=plan.key,
            sample=i,
            steps=w.steps,
            step_tokens=w.tokens,
            answer=w.answer,
            answer_forced=w.forced,
            correct=grade_answer(w.answer, problem.answer).correct,
            stop=w.stop,
        )
        for i, w in enumerate(written)
    ]


@dataclass
class _Written:
    """One solution (or the rest of one) written by `_write_on`."""

    steps: list[str]
    tokens: list[list[int]]
    stop: str = "steps"
    answer: str | None = None
    forced: bool = False


def _write_on(
    model: LanguageModel,
    start: Seq,
    samples: int,
    plan: RolloutPlan,
    steps_left: int,
    seed: int,
    should_stop: StopFn | None,
) -> list[_Written]:
    """`samples` solutions continuing `start`, step by step as the search cuts
    steps, at most `steps_left` steps each, each with its answer (forced when it
    wrote no box). `start` stays the caller's."""
    seqs: list[Seq] = []
    try:
        for _ in range(samples):
            seqs.append(model.fork(start))
        written = [_Written([], []) for _ in seqs]
        done = [False] * len(seqs)
        for step in range(steps_left):
            live = [i for i, finished in enumerate(done) if not finished]
            if not live:
                break
            last = step == steps_left - 1
            params = SampleParams(
                temperature=plan.temperature,
                max_tokens=plan.max_step_tokens,
                seed=seed + step,
                delimiter=None if last else "\n\n",
            )
            # k=1 per sequence, one call for all: every sample advances together.
            groups = model.sample([seqs[i] for i in live], 1, params, should_stop=should_stop)
            for i, [continuation] in zip(live, groups, strict=True):
                model.release(seqs[i])
                seqs[i] = continuation.seq
                written[i].steps.append(continuation.text)
                written[i].tokens.append(list(continuation.tokens))
                # A step cut at its token cap goes on at the next step, as in the search.
                if continuation.stop is StopReason.EOS or (last and continuation.stop is StopReason.LENGTH):
                    written[i].stop, done[i] = continuation.stop.value, True
                elif last_boxed(continuation.text) is not None:
                    written[i].stop, done[i] = "answer", True
        for seq, w in zip(seqs, written, strict=True):
            w.answer = last_boxed("".join(w.steps))
            if w.answer is None:
                w.forced = True
                w.answer = force_answer(model, seq, should_stop=should_stop).answer
        return written
    finally:
        for seq in seqs:
            model.release(seq)


def continuations_right(
    model: LanguageModel,
    problem: Problem,
    rollout: Rollout,
    step: int,
    plan: RolloutPlan,
    k: int,
    *,
    should_stop: StopFn | None = None,
) -> int:
    """Monte-Carlo label of a step: how many of `k` solutions that `model` writes
    on from the rollout's first `step + 1` steps reach the right answer (the
    rollout's plan: its temperature, step caps and the steps it had left)."""
    steps_left = plan.max_steps - (step + 1)
    if steps_left <= 0 or step >= len(rollout.steps) - 1:
        raise ValueError("a rollout's last step has nothing to continue; its label is the rollout's own")
    prefix = [token for tokens in rollout.step_tokens[: step + 1] for token in tokens]
    seq = model.start(model.format_chat(SYSTEM_PROMPT, problem.problem))
    try:
        model.extend(seq, prefix, should_stop=should_stop)
        seed = zlib.crc32(f"{problem.id}/{rollout.plan}/{rollout.sample}/{step}/mc".encode())
        written = _write_on(model, seq, k, plan, steps_left, seed, should_stop)
    finally:
        model.release(seq)
    return sum(grade_answer(w.answer, problem.answer).correct for w in written)


def problems_after(problems: Iterable[Problem], skip: int) -> list[Problem]:
    """The problems from row `skip` on (rows before it are kept for measuring)."""
    return list(problems)[skip:]
