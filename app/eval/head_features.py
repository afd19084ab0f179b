"""Step features for a value head, read the way the search reads them.

For every step of a rollout the target teacher-forces the solution up to and
including that step; the feature is its final hidden state at the row that
predicts the step's last token (the state the search gets when it scores a
draft or samples a step). All prefixes of one rollout go in one `score` call,
so their shared rows are decoded once.

Beside the state, each step keeps signals a head is compared with: the mean
target log-probability of the step's tokens and the arithmetic check's
probability of its least likely result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.eval.rollouts import Rollout
from app.search.arithmetic import result_probability
from engines.base import SYSTEM_PROMPT, LanguageModel, StopFn


@dataclass
class StepFeatures:
    """One row per step of many rollouts."""

    states: np.ndarray  # (steps, hidden) float32
    labels: np.ndarray  # (steps,) 1.0 when the rollout's answer is right
    problems: list[str]  # the rollout's problem id, per step
    plans: list[str]  # "draft@0.3", ...
    step_index: np.ndarray  # (steps,) position of the step in its solution
    mean_logprob: np.ndarray  # (steps,) mean target log-probability of the step's tokens
    result_prob: np.ndarray  # (steps,) arithmetic check's probability, NaN when no result
    keys: list[str]  # "problem/plan/sample/step", to find a step again

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(
            tmp,
            states=self.states,
            labels=self.labels,
            problems=np.array(self.problems),
            plans=np.array(self.plans),
            step_index=self.step_index,
            mean_logprob=self.mean_logprob,
            result_prob=self.result_prob,
            keys=np.array(self.keys),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StepFeatures:
        with np.load(path, allow_pickle=False) as f:
            return cls(
                states=f["states"],
                labels=f["labels"],
                problems=[str(p) for p in f["problems"]],
                plans=[str(p) for p in f["plans"]],
                step_index=f["step_index"],
                mean_logprob=f["mean_logprob"],
                result_prob=f["result_prob"],
                keys=[str(k) for k in f["keys"]],
            )

    @classmethod
    def concat(cls, parts: Sequence[StepFeatures]) -> StepFeatures:
        return cls(
            states=np.concatenate([p.states for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            problems=[x for p in parts for x in p.problems],
            plans=[x for p in parts for x in p.plans],
            step_index=np.concatenate([p.step_index for p in parts]),
            mean_logprob=np.concatenate([p.mean_logprob for p in parts]),
            result_prob=np.concatenate([p.result_prob for p in parts]),
            keys=[x for p in parts for x in p.keys],
        )


def rollout_features(
    target: LanguageModel, question: str, rollout: Rollout, *, should_stop: StopFn | None = None
) -> StepFeatures:
    """The features of every step of one rollout, from one teacher-forcing call."""
    root = target.start(target.format_chat(SYSTEM_PROMPT, question))
    try:
        prefixes: list[list[int]] = []
        tokens: list[int] = []
        for step in rollout.step_tokens:
            tokens = tokens + list(step)
            prefixes.append(tokens)
        scored = target.score([(root, prefix) for prefix in prefixes], should_stop=should_stop)
    finally:
        target.release(root)
    states, means, results, kept = [], [], [], []
    try:
        for index, (step_text, step_tokens, result) in enumerate(
            zip(rollout.steps, rollout.step_tokens, scored, strict=True)
        ):
            if result.hidden is None:
                # A one-token first step: its state is the prompt's row, which
                # prefill does not compute. Such a step is left out.
                continue
            kept.append(index)
            states.append(np.asarray(result.hidden, np.float32))
            own = result.logprobs[len(result.logprobs) - len(step_tokens) :]
            means.append(sum(own) / len(own) if own else 0.0)
            p = result_probability(step_text, step_tokens, own, target.detokenize)
            results.append(math.nan if p is None else p)
    finally:
        for result in scored:
            target.release(result.seq)
    n = len(states)
    return StepFeatures(
        states=np.stack(states) if states else np.zeros((0, target_width(target)), np.float32),
        labels=np.full(n, 1.0 if rollout.correct else 0.0),
        problems=[rollout.problem] * n,
        plans=[rollout.plan] * n,
        step_index=np.array(kept, dtype=np.int64),
        mean_logprob=np.array(means),
        result_prob=np.array(results),
        keys=[f"{rollout.problem}/{rollout.plan}/{rollout.sample}/{i}" for i in kept],
    )


def target_width(target: LanguageModel) -> int:
    """The hidden size, for an empty feature block (0 when the model does not say)."""
    return int(getattr(target, "n_embd", 0))


def all_features(
    target: LanguageModel,
    rollouts: Iterable[Rollout],
    questions: dict[str, str],
    *,
    done: Callable[[Rollout], None] = lambda rollout: None,
    should_stop: StopFn | None = None,
) -> StepFeatures | None:
    parts = []
    for rollout in rollouts:
        if rollout.steps:
            parts.append(rollout_features(target, questions[rollout.problem], rollout, should_stop=should_stop))
        done(rollout)
    return StepFeatures.concat(parts) if parts else None
