"""Training a value head for a target: rollouts, features, fit, report.

Everything expensive is kept in a work folder beside the head file
(`HEAD.work/`), so an interrupted run resumes where it stopped:

- `rollouts.jsonl`: the sampled solutions (see `app.eval.rollouts`);
- `features/NNNN.npz`: the target's hidden state and the comparison signals
  of every step, a file per batch of rollouts (`features-layer-N/` for a
  head on layer N's output);
- `judge.json`: the judge's reward of held-out steps, for the AUC table;
- `monte-carlo.jsonl`: with Monte-Carlo labels, how many of k solutions
  written on from a step reached the right answer, a line per step.

The fit itself takes seconds and is redone each run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.eval.datasets import Problem
from app.eval.head_features import StepFeatures, rollout_features
from app.eval.head_fit import auc_table, fit_head, split_by_problem
from app.eval.rollouts import Rollout, RolloutPlan, continuations_right, read_rollouts, sample_rollouts
from app.search.equations import false_equations
from engines.base import LanguageModel, RewardModel, RewardQuery, StopFn
from engines.value_head import ValueHead

# Rollouts whose features go in one file: small enough to lose little on Ctrl-C.
FEATURE_BATCH = 16
# Held-out steps the judge scores for the comparison (it costs a model call each).
JUDGE_STEPS = 300
JUDGE_BATCH = 8
# Steps that get Monte-Carlo labels by default: each costs k solutions' worth of sampling.
MONTE_CARLO_STEPS = 300


@dataclass(frozen=True)
class HeadReport:
    head: ValueHead
    table: dict[str, dict[str, float | int | None]]
    problems: dict[str, int]  # train / valid / test problem counts
    steps: dict[str, int]
    l2: float

    def lines(self) -> list[str]:
        out = [
            f"problems: {self.problems['train']} train, {self.problems['valid']} validation, "
            f"{self.problems['test']} held out; steps {self.steps['train']} / {self.steps['valid']} / {self.steps['test']}; "
            f"L2 {self.l2:g}; hidden state: {'final' if self.head.layer is None else f'output of layer {self.head.layer}'}",
            "",
            "| signal (held-out problems' steps) | AUC | steps |",
            "| --- | ---: | ---: |",
        ]
        for name, row in self.table.items():
            value = row["auc"]
            out.append(f"| {name} | {'-' if value is None else f'{value:.3f}'} | {row['steps']} |")
        return out


@dataclass
class Progress:
    """What a caller shows: phase names and counts."""

    phase: Callable[[str, int, int], None] = lambda name, total, done: None
    advance: Callable[[int], None] = lambda n: None


@dataclass
class HeadTraining:
    work: Path
    problems: Sequence[Problem]
    plans: Sequence[RolloutPlan]
    progress: Progress = field(default_factory=Progress)
    should_stop: StopFn | None = None
    judge_steps: int = JUDGE_STEPS
    # Monte-Carlo labels: k solutions written on from each of up to `mc_steps` steps.
    mc: int = 0
    mc_steps: int = MONTE_CARLO_STEPS
    # The layer whose output the head reads (None: the final state); the
    # target must be opened with the same.
    layer: int | None = None

    @property
    def rollouts_path(self) -> Path:
        return self.work / "rollouts.jsonl"

    def sample(self, models: Mapping[str, LanguageModel | None]) -> list[Rollout]:
        self.work.mkdir(parents=True, exist_ok=True)
        done = {(r.problem, r.plan) for r in read_rollouts(self.rollouts_path)}
        wanted = [(plan, i) for plan in self.plans for i in range(len(self.problems)) if plan.applies(i)]
        todo = [(plan, i) for plan, i in wanted if (self.problems[i].id, plan.key) not in done]
        self.progress.phase("rollouts", len(wanted), len(wanted) - len(todo))
        # Plan by plan, a few problems at a time: every plan has data early on.
        chunk = 6
        for start in range(0, len(self.problems), chunk):
            for plan in self.plans:
                model = models[plan.source]
                assert model is not None, "plans name only the roles the preset has (parse_plans checks)"
                indices = range(start, min(start + chunk, len(self.problems)))
                problems = [self.problems[i] for i in indices if plan.applies(i)]
                for _ in sample_rollouts(model, problems, plan, self.rollouts_path, should_stop=self.should_stop):
                    self.progress.advance(1)
        ids = {p.id for p in self.problems}
        keys = {plan.key for plan in self.plans}
        return [r for r in read_rollouts(self.rollouts_path) if r.problem in ids and r.plan in keys]

    def features(self, target: LanguageModel, rollouts: Sequence[Rollout]) -> StepFeatures:
        folder = self.work / ("features" if self.layer is None else f"features-layer-{self.layer}")
        folder.mkdir(parents=True, exist_ok=True)
        parts = [StepFeatures.load(f) for f in sorted(folder.glob("*.npz"))]
        seen = {key.rsplit("/", 1)[0] for part in parts for key in part.keys}
        todo = [r for r in rollouts if f"{r.problem}/{r.plan}/{r.sample}" not in seen and r.steps]
        self.progress.phase("features", len(rollouts), len(rollouts) - len(todo))
        questions = {p.id: p.problem for p in self.problems}
        index = len(parts)
        for start in range(0, len(todo), FEATURE_BATCH):
            batch = []
            for rollout in todo[start : start + FEATURE_BATCH]:
                batch.append(
                    rollout_features(target, questions[rollout.problem], rollout, should_stop=self.should_stop)
                )
                self.progress.advance(1)
            part = StepFeatures.concat(batch)
            part.save(folder / f"{index:04d}.npz")
            parts.append(part)
            index += 1
        wanted = {f"{r.problem}/{r.plan}/{r.sample}" for r in rollouts}
        merged = StepFeatures.concat(parts)
        keep = np.array([key.rsplit("/", 1)[0] in wanted for key in merged.keys])
        return _select(merged, keep)

    def judge(
        self, reward: RewardModel, features: StepFeatures, rows: np.ndarray, rollouts: Sequence[Rollout]
    ) -> np.ndarray:
        """The judge's reward of up to JUDGE_STEPS of `rows` (NaN elsewhere), cached."""
        path = self.work / "judge.json"
        cache: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        by_key = {f"{r.problem}/{r.plan}/{r.sample}": r for r in rollouts}
        questions = {p.id: p.problem for p in self.problems}
        chosen = np.flatnonzero(rows)
        if len(chosen) > self.judge_steps:
            chosen = np.sort(np.random.default_rng(0).choice(chosen, self.judge_steps, replace=False))
        todo = [i for i in chosen if features.keys[i] not in cache]
        self.progress.phase("judge", len(chosen), len(chosen) - len(todo))
        for start in range(0, len(todo), JUDGE_BATCH):
            batch = todo[start : start + JUDGE_BATCH]
            queries = []
            for i in batch:
                rollout_key, step = features.keys[i].rsplit("/", 1)
                rollout, k = by_key[rollout_key], int(step)
                queries.append(RewardQuery(questions[rollout.problem], tuple(rollout.steps[:k]), rollout.steps[k]))
            for i, value in zip(batch, reward.score(queries, should_stop=self.should_stop), strict=True):
                cache[features.keys[i]] = value
            self.progress.advance(len(batch))
            path.write_text(json.dumps(cache))
        out = np.full(len(features.keys), math.nan)
        for i in chosen:
            out[i] = cache[features.keys[i]]
        return out

    def monte_carlo(
        self, models: Mapping[str, LanguageModel | None], rollouts: Sequence[Rollout], features: StepFeatures
    ) -> dict[str, int]:
        """Monte-Carlo labels (right continuations of `mc`, by step key) of up to
        `mc_steps` steps of the problems the head is fitted on, cached. A step is
        continued by the model and plan that wrote its rollout, at the
        rollout's temperature: the value of a prefix under the search's own
        writers, where the outcome label counts only the one ending sampled."""
        path = self.work / "monte-carlo.jsonl"
        done = _read_monte_carlo(path, self.mc)
        by_key = {f"{r.problem}/{r.plan}/{r.sample}": r for r in rollouts}
        plans = {plan.key: plan for plan in self.plans}
        problems = {p.id: p for p in self.problems}
        split = split_by_problem(features.problems)
        fitted = split.train | split.valid
        open_steps = [
            i
            for i in np.flatnonzero(fitted)
            if features.step_index[i] < len(by_key[features.keys[i].rsplit("/", 1)[0]].steps) - 1
        ]
        chosen = open_steps
        if len(chosen) > self.mc_steps:
            chosen = sorted(np.random.default_rng(0).choice(open_steps, self.mc_steps, replace=False))
        todo = [i for i in chosen if features.keys[i] not in done]
        self.progress.phase("monte-carlo", len(chosen), len(chosen) - len(todo))
        for i in todo:
            key = features.keys[i]
            rollout_key, step = key.rsplit("/", 1)
            rollout = by_key[rollout_key]
            plan = plans[rollout.plan]
            model = models[plan.source]
            assert model is not None, "rollouts come from the roles the preset has"
            right = continuations_right(
                model, problems[rollout.problem], rollout, int(step), plan, self.mc, should_stop=self.should_stop
            )
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "k": self.mc, "right": right}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            done[key] = right
            self.progress.advance(1)
        return {features.keys[i]: done[features.keys[i]] for i in chosen}


def _read_monte_carlo(path: Path, k: int) -> dict[str, int]:
    """The labels of `path` made with `k` continuations; a line cut by a crash is dropped."""
    done: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            entry = json.loads(line)
            if entry["k"] == k:
                done[entry["key"]] = int(entry["right"])
    return done


def monte_carlo_labels(features: StepFeatures, right: Mapping[str, int], k: int) -> np.ndarray:
    """Soft labels: a step with Monte-Carlo continuations gets the share of right
    endings among its own and the k written on; the others keep their outcome."""
    labels = features.labels.astype(np.float64).copy()
    for i, key in enumerate(features.keys):
        if key in right:
            labels[i] = (labels[i] + right[key]) / (k + 1)
    return labels


def fit_and_report(
    features: StepFeatures,
    *,
    model_sha256: str,
    judge: Callable[[np.ndarray], np.ndarray] | None = None,
    info: dict[str, Any] | None = None,
    labels: np.ndarray | None = None,
    false_equation: np.ndarray | None = None,
    layer: int | None = None,
) -> HeadReport:
    """Fit the head (on `labels`, soft ones from `monte_carlo_labels`, or each
    step's outcome) and measure it against the other signals on held-out
    problems, always against the outcome: what the search is graded on.
    With `false_equation` (per step, from `false_equation_steps`) the table
    also has the head as the search uses it with the equation check on."""
    split = split_by_problem(features.problems)
    fit = fit_head(
        features.states.astype(np.float64),
        features.labels if labels is None else labels,
        split,
        eval_labels=features.labels,
    )
    head = ValueHead(fit.weight, fit.bias, fit.mean, fit.std, model_sha256)
    logits = head.logits(features.states.astype(np.float64))
    signals: dict[str, np.ndarray] = {"value head": logits}
    if false_equation is not None:
        signals["value head, false equations at 0"] = np.where(false_equation, -np.inf, logits)
    if judge is not None:
        signals["judge (reward model)"] = judge(split.test)
    signals["mean target log-probability"] = features.mean_logprob
    signals["arithmetic check probability"] = features.result_prob
    table = auc_table(signals, features.labels, split.test)
    problems = {
        name: len({p for p, keep in zip(features.problems, rows) if keep})
        for name, rows in (("train", split.train), ("valid", split.valid), ("test", split.test))
    }
    steps = {"train": int(split.train.sum()), "valid": int(split.valid.sum()), "test": int(split.test.sum())}
    full_info = {
        **(info or {}),
        "problems": problems,
        "steps": steps,
        "positive_rate": float(features.labels.mean()),
        "l2": fit.l2,
        "validation_auc": {f"{k:g}": v for k, v in fit.valid_auc.items()},
        "held_out_auc": table,
    }
    head = ValueHead(fit.weight, fit.bias, fit.mean, fit.std, model_sha256, full_info, layer)
    return HeadReport(head, table, problems, steps, fit.l2)


def false_equation_steps(features: StepFeatures, rollouts: Sequence[Rollout]) -> np.ndarray:
    """Whether each step writes a false equation (what the search's equation check zeroes)."""
    texts = {f"{r.problem}/{r.plan}/{r.sample}": r.steps for r in rollouts}
    return np.array(
        [
            bool(false_equations(texts[key.rsplit("/", 1)[0]][int(step)]))
            for key, step in zip(features.keys, features.step_index)
        ],
        dtype=bool,
    )


def _select(features: StepFeatures, keep: np.ndarray) -> StepFeatures:
    idx = np.flatnonzero(keep)
    return StepFeatures(
        states=features.states[idx],
        labels=features.labels[idx],
        problems=[features.problems[i] for i in idx],
        plans=[features.plans[i] for i in idx],
        step_index=features.step_index[idx],
        mean_logprob=features.mean_logprob[idx],
        result_prob=features.result_prob[idx],
        keys=[features.keys[i] for i in idx],
    )
