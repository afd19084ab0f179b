"""scripts/head_learning_curve.py on step features with a known signal."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from app.eval.head_features import StepFeatures
from app.eval.head_fit import split_by_problem
from engines.value_head import ValueHead

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "head_learning_curve.py"


def _script():
    spec = importlib.util.spec_from_file_location("head_learning_curve", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _features(problems: int = 40, steps: int = 6, hidden: int = 8, noise: float = 1.5, seed: int = 0) -> StepFeatures:
    """Each step's state carries its solution's grade along one direction, under noise."""
    rng = np.random.default_rng(seed)
    rows = problems * steps
    labels = np.array([float((i // 3) % 2) for i in range(rows)])  # half the solutions right
    states = rng.normal(0, noise, (rows, hidden))
    states[:, 0] += 2 * labels - 1
    result_prob = np.full(rows, np.nan)
    result_prob[::4] = np.linspace(0.01, 1.0, len(result_prob[::4]))
    return StepFeatures(
        states=states.astype(np.float32),
        labels=labels,
        problems=[f"p{i // steps}" for i in range(rows)],
        plans=["draft@0.3"] * rows,
        step_index=np.array([i % steps for i in range(rows)]),
        mean_logprob=np.zeros(rows),
        result_prob=result_prob,
        keys=[f"p{i // steps}/draft@0.3/0/{i % steps}" for i in range(rows)],
    )


def test_the_curve_rises_with_problems_and_ends_at_train_heads_split():
    script = _script()
    features = _features()
    held_out = split_by_problem(features.problems).test
    pool = len(set(np.array(features.problems)[~held_out]))
    small, full = script.learning_curve(features, [3, pool], draws=4)
    assert small.problems == 3 and full.problems == pool
    assert len(full.aucs) == 1  # every problem: one fit, on train-head's own split
    assert full.aucs[0] > 0.8  # the signal is there to be found
    assert np.mean(small.aucs) < full.aucs[0]


def test_the_arithmetic_check_flags_exactly_the_doubted_steps():
    script = _script()
    features = _features()
    held_out = split_by_problem(features.problems).test
    rewards = np.full(len(features.labels), 0.5)
    rewards[features.labels == 1] = 0.6  # a perfect head: AUC 1 until the check scales right steps down
    rows = {
        c: (score, flagged, wrong) for c, score, flagged, wrong in script.result_check_rows(rewards, features, [0, 0.5])
    }
    assert rows[0] == (1.0, 0, 0)
    doubted = held_out & (features.result_prob < 0.5)
    assert rows[0.5][1] == int(doubted.sum()) > 0
    assert rows[0.5][2] == int((doubted & (features.labels == 0)).sum())
    assert rows[0.5][0] < 1.0  # right steps with doubted results now rank below some wrong ones


def test_the_command_prints_both_tables_and_refuses_a_head_of_another_size(tmp_path, capsys):
    script = _script()
    features = _features(problems=24)
    (tmp_path / "features").mkdir()
    features.save(tmp_path / "features" / "0000.npz")
    head = ValueHead(np.ones(8), 0.0, np.zeros(8), np.ones(8), "0" * 64)
    head.save(tmp_path / "head.safetensors")
    assert (
        script.main([str(tmp_path), "--sizes", "4,100", "--draws", "2", "--head", str(tmp_path / "head.safetensors")])
        == 0
    )
    out = capsys.readouterr().out
    assert "| problems fitted on | held-out AUC" in out and "| 0.2 |" in out

    ValueHead(np.ones(4), 0.0, np.zeros(4), np.ones(4), "0" * 64).save(tmp_path / "small.safetensors")
    with pytest.raises(SystemExit) as stop:
        script.main([str(tmp_path), "--sizes", "4", "--head", str(tmp_path / "small.safetensors")])
    assert stop.value.code == 2
    assert "hidden size 4, the features have 8" in capsys.readouterr().err


def test_a_folder_without_features_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit) as stop:
        _script().main([str(tmp_path)])
    assert "holds no step features" in str(stop.value.code)
