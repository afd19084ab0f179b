"""The value head: fitting, AUC, splits by problem, the head file and its checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from app.eval.head_fit import auc, auc_table, fit_head, fit_logistic, split_by_problem
from engines.base import EngineError, RewardQuery
from engines.value_head import FORMAT, HeadFileError, ValueHead, ValueHeadReward, check_head_fits, load_head


def test_auc_matches_pair_counting_with_ties() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    labels = np.array([0, 0, 1, 1, 1, 0])
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))
    assert auc(scores, np.zeros(6)) is None


def test_logistic_fit_reaches_the_optimum() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x @ np.array([2.0, -1.0, 0.0]) + rng.normal(size=400) > 0).astype(float)
    w, b = fit_logistic(x, y, l2=1e-3)
    # At the optimum the gradient of the (class-weighted) objective vanishes.
    pos = y.mean()
    sw = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos)) / len(y)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    grad_w = x.T @ (sw * (p - y)) + 1e-3 * w
    assert np.abs(grad_w).max() < 1e-6
    assert w[0] > 1 and w[1] < -0.5 and abs(w[2]) < 0.3


def test_soft_labels_recover_the_logit_they_were_drawn_from() -> None:
    # Monte-Carlo labels: each step's share of right endings. With balanced classes
    # (mean label 0.5) the class weights are equal and the fit is plain logistic
    # regression on the shares, whose optimum is the logit that made them.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 2))
    share = 1 / (1 + np.exp(-(x @ np.array([1.5, -0.5]))))
    y = rng.binomial(8, share) / 8  # 8 continuations per step
    w, b = fit_logistic(x, y, l2=1e-6)
    assert w == pytest.approx([1.5, -0.5], abs=0.1) and abs(b) < 0.1
    hard = fit_logistic(x, (y > 0.5).astype(float), l2=1e-6)[0]
    assert abs(hard[0]) > 2.0  # thresholding the shares would overstate the slope


def test_one_label_is_refused() -> None:
    with pytest.raises(ValueError, match="same grade"):
        fit_logistic(np.ones((5, 2)), np.ones(5), 0.1)


def test_too_few_problems_to_fit_and_validate_are_refused() -> None:
    x = np.random.default_rng(0).normal(size=(6, 2))
    y = np.array([0.0, 1.0] * 3)
    for problems in (["a"] * 6, ["a", "a", "b", "b", "c", "c"]):
        split = split_by_problem(problems)
        assert not (split.train.any() and split.valid.any())
        with pytest.raises(ValueError, match="too few problems"):
            fit_head(x, y, split)


def test_split_keeps_each_problem_in_one_part() -> None:
    problems = [f"p{i // 5}" for i in range(500)]
    split = split_by_problem(problems)
    for part in (split.train, split.valid, split.test):
        assert part.any()
    assert not (split.train & split.valid).any() and not (split.train & split.test).any()
    assert (split.train | split.valid | split.test).all()
    for p in set(problems):
        rows = np.array([q == p for q in problems])
        assert len({(bool(split.train[rows][0]), bool(split.valid[rows][0]))}) == 1
        assert split.train[rows].all() or not split.train[rows].any()


def test_fit_head_separates_held_out_problems() -> None:
    rng = np.random.default_rng(1)
    n_problems, per = 120, 6
    direction = rng.normal(size=16)
    problems, xs, ys = [], [], []
    for i in range(n_problems):
        right = rng.random() < 0.4
        for _ in range(per):
            problems.append(f"q{i}")
            xs.append(rng.normal(size=16) * 2 + (1.0 if right else -1.0) * direction)
            ys.append(float(right))
    x, y = np.array(xs), np.array(ys)
    split = split_by_problem(problems)
    fit = fit_head(x, y, split)
    head = ValueHead(fit.weight, fit.bias, fit.mean, fit.std, "abc")
    held_out = auc(head.logits(x[split.test]), y[split.test])
    assert held_out is not None and held_out > 0.9
    table = auc_table(
        {"head": head.logits(x), "noise": np.where(split.test, rng.random(len(y)), np.nan)}, y, split.test
    )
    assert table["head"]["auc"] == pytest.approx(held_out)
    assert table["noise"]["steps"] == int(split.test.sum())


def _head(hidden: int = 8) -> ValueHead:
    rng = np.random.default_rng(2)
    return ValueHead(
        rng.normal(size=hidden), 0.25, rng.normal(size=hidden), rng.random(hidden) + 0.5, "f" * 64, {"auc": 0.8}
    )


def test_head_file_round_trip(tmp_path: Path) -> None:
    head = _head()
    path = tmp_path / "head.safetensors"
    head.save(path)
    loaded = load_head(path)
    assert loaded.info == {"auc": 0.8} and loaded.model_sha256 == "f" * 64
    states = np.random.default_rng(3).normal(size=(4, 8))
    assert np.allclose(loaded.rewards(states), head.rewards(states), atol=1e-5)
    expected = 1 / (1 + math.exp(-(((states[0] - head.mean) / head.std) @ head.weight + head.bias)))
    assert loaded.rewards(states)[0] == pytest.approx(expected, abs=1e-5)


def test_head_file_keeps_its_layer(tmp_path: Path) -> None:
    from dataclasses import replace

    from safetensors.numpy import load_file, save_file

    path = tmp_path / "head.safetensors"
    _head().save(path)
    assert load_head(path).layer is None  # the final state
    replace(_head(), layer=16).save(path)
    assert load_head(path).layer == 16
    # Heads written before layers were named read the final state.
    tensors = load_file(str(path))
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"format": FORMAT, "model_sha256": "f" * 64, "hidden_size": "8"})
    assert load_head(old).layer is None
    for bad in ("-1", "middle"):
        damaged = tmp_path / f"bad{bad}.safetensors"
        save_file(tensors, str(damaged), metadata={"format": FORMAT, "hidden_size": "8", "layer": bad})
        with pytest.raises(HeadFileError, match="incomplete"):
            load_head(damaged)


def test_missing_and_damaged_head_files(tmp_path: Path) -> None:
    with pytest.raises(HeadFileError, match="does not exist"):
        load_head(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(HeadFileError, match="damaged"):
        load_head(bad)
    head_path = tmp_path / "head.safetensors"
    _head().save(head_path)
    data = head_path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(HeadFileError, match="damaged"):
        load_head(cut)


def test_head_made_for_another_model_is_refused(tmp_path: Path) -> None:
    head = _head()
    with pytest.raises(HeadFileError, match="hidden size 8"):
        check_head_fits(head, tmp_path / "h", model_name="m", hidden_size=16, model_sha256="f" * 64)
    with pytest.raises(HeadFileError, match="another model file"):
        check_head_fits(head, tmp_path / "h", model_name="m", hidden_size=8, model_sha256="0" * 64)
    check_head_fits(head, tmp_path / "h", model_name="m", hidden_size=8, model_sha256="f" * 64)


def test_reward_reads_the_policy_states() -> None:
    head = _head()
    reward = ValueHeadReward(head, model_name="target")
    states = np.random.default_rng(4).normal(size=(2, 8))
    queries = [RewardQuery("q", (), "step", policy_state=states[i]) for i in range(2)]
    assert reward.score(queries) == pytest.approx(list(head.rewards(states)))
    assert reward.usage.calls == 1
    with pytest.raises(EngineError, match="hidden states"):
        reward.score([RewardQuery("q", (), "step")])
    # One candidate without a state gets the head's reward for an average state.
    [with_state, without] = reward.score([queries[0], RewardQuery("q", (), "step")])
    assert with_state == pytest.approx(float(head.rewards(states[:1])[0]))
    assert without == pytest.approx(1 / (1 + math.exp(-head.bias)))
