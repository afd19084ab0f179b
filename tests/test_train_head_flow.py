"""A head trained end to end on scripted models: rollouts, features read by
teacher forcing, the fit and its report, resumed work and bad input."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_cli_solve import write_catalog

from app.cli import main
from app.eval.datasets import Problem
from app.eval.head_fit import split_by_problem
from app.eval.rollouts import Rollout, RolloutPlan, continuations_right
from app.eval.train_head import HeadTraining, false_equation_steps, fit_and_report, monte_carlo_labels
from engines.testing.scripted import Continuation, ScriptedModel, ScriptedReward

RIGHT = "Add 12 and 30.\n\n"
WRONG = "Subtract 30 from 12.\n\n"
SCRIPT = {
    "": (Continuation(RIGHT, -0.3), Continuation(WRONG, -0.9)),
    RIGHT: (Continuation("The answer is \\boxed{42}.", -0.1, eos=True),),
    WRONG: (Continuation("The answer is \\boxed{-18}.", -0.1, eos=True),),
}


def _state(step: str) -> list[float]:
    # A "hidden state" that knows which way the solution went, plus noise.
    good = 1.0 if ("12 and" in step or "42" in step) else -1.0
    rng = np.random.default_rng(zlib.crc32(step.encode()))
    return [good + rng.normal(scale=0.5), *rng.normal(size=3)]


def test_training_fits_a_head_that_separates_held_out_problems(tmp_path: Path) -> None:
    problems = [Problem(f"p{i}", "What is 12 + 30?", "42") for i in range(40)]
    draft = ScriptedModel("draft", SCRIPT)
    target = ScriptedModel("target", SCRIPT, states=_state)
    plans = [RolloutPlan("draft", 1.0, 2), RolloutPlan("target", 1.0, 2, every=2)]
    training = HeadTraining(tmp_path / "work", problems, plans)
    rollouts = training.sample({"draft": draft, "target": target})
    assert len(rollouts) == 40 * 2 + 20 * 2
    features = training.features(target, rollouts)
    assert features.states.shape == (sum(len(r.steps) for r in rollouts), 4)
    judge = ScriptedReward("judge", {RIGHT: 0.7, WRONG: 0.6}, default=0.5)
    report = fit_and_report(
        features, model_sha256="ab" * 32, judge=lambda rows: training.judge(judge, features, rows, rollouts)
    )
    head_auc = report.table["value head"]["auc"]
    assert head_auc is not None and head_auc > 0.95
    assert report.table["judge (reward model)"]["steps"] > 0
    assert report.head.info["held_out_auc"]["value head"]["auc"] == head_auc
    assert any("value head" in line for line in report.lines())
    assert draft.live == 0 and target.live == 0
    # Everything expensive is on disk: a second run samples and reads nothing.
    calls = (draft.usage.calls, target.usage.calls)
    again = training.sample({"draft": draft, "target": target})
    assert len(again) == len(rollouts)
    assert training.features(target, again).keys == features.keys
    assert (draft.usage.calls, target.usage.calls) == calls
    assert json.loads((tmp_path / "work" / "judge.json").read_text())


def test_train_head_refuses_bad_input_before_any_rollout(tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "m.toml", tiny_qwen, tiny_qwen)))
    no_answers = tmp_path / "q.jsonl"
    no_answers.write_text(json.dumps({"id": "a", "problem": "What is 1 + 1?"}) + "\n")
    out = tmp_path / "head.safetensors"
    code = main(["train-head", "--preset", "tiny", "--dataset", str(no_answers), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "needs `problem` and `answer`" in err and "Traceback" not in err
    code = main(["train-head", "--preset", "tiny", "--dataset", str(no_answers), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a directory" in err
    assert not (tmp_path / "head.safetensors.work").exists()


@pytest.mark.parametrize("answer", ["1"])
def test_train_head_with_one_kind_of_label_is_one_sentence(
    answer: str, tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "m.toml", tiny_qwen, tiny_qwen)))
    monkeypatch.setenv("SPECS_LOCAL_THREADS", "1")
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"q{i}", "problem": "What is 1 + 1?", "answer": answer}) + "\n" for i in range(2))
    )
    out = tmp_path / "head.safetensors"
    code = main(
        [
            "train-head",
            "--preset",
            "tiny",
            "--dataset",
            str(data),
            "--out",
            str(out),
            "--plans",
            "target@0.8*1",
            "--no-judge",
        ]
    )
    err = capsys.readouterr().err
    # Gibberish from random weights is never right: nothing to learn from, said in one sentence.
    assert code == 2 and "right and wrong" in err and "Traceback" not in err
    assert (tmp_path / "head.safetensors.work" / "rollouts.jsonl").exists()
    assert not out.exists()


THINK = "Think about it.\n\n"
UNDECIDED = {  # the first step says nothing yet: 60% of what follows it is right
    "": (Continuation(THINK, -0.1),),
    THINK: (Continuation(RIGHT, math.log(0.6)), Continuation(WRONG, math.log(0.4))),
    RIGHT: SCRIPT[RIGHT],
    WRONG: SCRIPT[WRONG],
}


def test_monte_carlo_labels_measure_what_follows_each_step(tmp_path: Path) -> None:
    problems = [Problem(f"p{i}", "What is 12 + 30?", "42") for i in range(40)]
    draft = ScriptedModel("draft", UNDECIDED)
    target = ScriptedModel("target", UNDECIDED, states=_state)
    plans = [RolloutPlan("draft", 1.0, 2)]
    training = HeadTraining(tmp_path / "work", problems, plans, mc=8, mc_steps=1000)
    writers = {"draft": draft, "target": target}
    rollouts = training.sample(writers)
    features = training.features(target, rollouts)
    right = training.monte_carlo(writers, rollouts, features)
    steps = {key: features.keys.index(key) for key in right}
    text = {f"{r.problem}/{r.plan}/{r.sample}/{i}": step for r in rollouts for i, step in enumerate(r.steps)}
    # Only the problems the head is fitted on, never a solution's last step (its outcome is its label).
    test_problems = {p for p, held in zip(features.problems, split_by_problem(features.problems).test) if held}
    assert right and not {key.split("/")[0] for key in right} & test_problems
    assert all(text[key] in (THINK, RIGHT, WRONG) and features.step_index[i] < 2 for key, i in steps.items())
    # After the right or the wrong step every continuation agrees with it; after the
    # undecided one about 60% reach 42, whichever way its own solution went.
    assert {right[key] for key in right if text[key] == RIGHT} == {8}
    assert {right[key] for key in right if text[key] == WRONG} == {0}
    undecided = [right[key] / 8 for key in right if text[key] == THINK]
    assert len(undecided) > 20 and np.mean(undecided) == pytest.approx(0.6, abs=0.08)
    labels = monte_carlo_labels(features, right, 8)
    outcome = features.labels
    for key, i in steps.items():
        assert labels[i] == pytest.approx((outcome[i] + right[key]) / 9)
    unlabelled = np.array([key not in right for key in features.keys])
    assert (labels[unlabelled] == outcome[unlabelled]).all()
    report = fit_and_report(features, model_sha256="ab" * 32, labels=labels)
    assert report.table["value head"]["auc"] is not None and report.table["value head"]["auc"] > 0.9
    assert draft.live == 0 and target.live == 0
    # Kept on disk: the same call samples nothing again; another k is another label.
    calls = draft.usage.calls
    assert training.monte_carlo(writers, rollouts, features) == right
    assert draft.usage.calls == calls
    lines = (tmp_path / "work" / "monte-carlo.jsonl").read_text().splitlines()
    assert len(lines) == len(right) and all(json.loads(line)["k"] == 8 for line in lines)


def test_a_last_step_has_no_monte_carlo_label() -> None:
    model = ScriptedModel("m", SCRIPT)
    rollout = Rollout("p", "draft@1", 0, [RIGHT, "The answer is \\boxed{42}."], [[1], [2]], "42", False, True, "eos")
    with pytest.raises(ValueError, match="last step"):
        continuations_right(model, Problem("p", "q", "42"), rollout, 1, RolloutPlan("draft", 1.0, 1), 4)


def test_train_head_with_monte_carlo_labels_on_tiny_models(
    tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "m.toml", tiny_qwen, tiny_qwen)))
    monkeypatch.setenv("SPECS_LOCAL_THREADS", "1")
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"q{i}", "problem": "What is 1 + 1?", "answer": "2"}) + "\n" for i in range(8))
    )
    out = tmp_path / "head.safetensors"
    args = ["train-head", "--preset", "tiny", "--dataset", str(data), "--out", str(out), "--no-judge"]
    code = main([*args, "--plans", "target@1.5*2", "--mc", "2", "--mc-steps", "3"])
    err = capsys.readouterr().err
    # Random weights never write 2, so the fit refuses, after the labels are made and kept.
    assert code == 2 and "right and wrong" in err and "Traceback" not in err
    lines = [json.loads(line) for line in (tmp_path / "head.safetensors.work" / "monte-carlo.jsonl").open()]
    assert 1 <= len(lines) <= 3 and all(line["k"] == 2 and line["right"] == 0 for line in lines)


def test_train_head_refuses_models_on_servers_before_any_rollout(
    tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q", "problem": "What is 1 + 1?", "answer": "2"}) + "\n")
    catalog = tmp_path / "m.toml"
    catalog.write_text(
        f"""
[models.local]
path = "{tiny_qwen}"
file = "{tiny_qwen.name}"

[models.served]
url = "http://127.0.0.1:9/v1"

[presets.served-target]
draft = "local"
target = "served"
reward = {{ kind = "judge", model = "served" }}

[presets.served-draft]
draft = "served"
target = "local"
reward = {{ kind = "judge", model = "local" }}
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    out = tmp_path / "head.safetensors"
    args = ["train-head", "--dataset", str(data), "--out", str(out), "--no-judge"]
    for preset, extra, says in (
        ("served-target", [], "reads the hidden states of the target served, which its server does not return"),
        ("served-draft", [], "The draft served runs on a server"),
    ):
        code = main([*args, "--preset", preset, *extra])
        err = capsys.readouterr().err
        assert code == 2 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "head.safetensors.work").exists()
    # Without the draft in the plans the served draft is no matter: the target trains alone.
    monkeypatch.setenv("SPECS_LOCAL_THREADS", "1")
    code = main([*args, "--preset", "served-draft", "--plans", "target@1.5*1"])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot fit a head:" in err and "Traceback" not in err  # one problem: nothing to fit
    assert (tmp_path / "head.safetensors.work" / "rollouts.jsonl").exists()


def test_the_report_measures_the_head_with_the_equation_check(tmp_path: Path) -> None:
    slip = "12 + 30 = 52.\n\n"
    script = {
        "": (Continuation("12 + 30 = 42.\n\n", -0.3), Continuation(slip, -0.9)),
        "12 + 30 = 42.\n\n": (Continuation("The answer is \\boxed{42}.", -0.1, eos=True),),
        slip: (Continuation("The answer is \\boxed{52}.", -0.1, eos=True),),
    }

    rng = np.random.default_rng(0)

    def noise(step: str) -> list[float]:  # a state that knows nothing: fresh noise at every read
        return list(rng.normal(size=4))

    problems = [Problem(f"p{i}", "What is 12 + 30?", "42") for i in range(40)]
    target = ScriptedModel("target", script, states=noise)
    training = HeadTraining(tmp_path / "work", problems, [RolloutPlan("target", 1.0, 4)])
    rollouts = training.sample({"target": target})
    features = training.features(target, rollouts)
    flagged = false_equation_steps(features, rollouts)
    texts = {f"{r.problem}/{r.plan}/{r.sample}": r.steps for r in rollouts}
    assert flagged.any()
    for key, step, flag in zip(features.keys, features.step_index, flagged):
        assert flag == (texts[key.rsplit("/", 1)[0]][int(step)] == slip)
    report = fit_and_report(features, model_sha256="ab" * 32, false_equation=flagged)
    checked = report.table["value head, false equations at 0"]["auc"]
    alone = report.table["value head"]["auc"]
    assert checked is not None and alone is not None
    assert checked > alone + 0.1


def test_a_head_on_a_layer_keeps_its_features_apart_and_names_its_layer(tmp_path: Path) -> None:
    problems = [Problem(f"p{i}", "What is 12 + 30?", "42") for i in range(24)]
    target = ScriptedModel("target", SCRIPT, states=_state)
    plans = [RolloutPlan("target", 1.0, 2)]
    final = HeadTraining(tmp_path / "work", problems, plans)
    rollouts = final.sample({"target": target})
    final.features(target, rollouts)
    layered = HeadTraining(tmp_path / "work", problems, plans, layer=3)
    calls = target.usage.calls
    features = layered.features(target, rollouts)
    # The final states on disk are not a layer's: that layer's are read anew, beside them.
    assert target.usage.calls > calls
    assert sorted(p.name for p in (tmp_path / "work").iterdir() if p.is_dir()) == ["features", "features-layer-3"]
    report = fit_and_report(features, model_sha256="ab" * 32, layer=3)
    assert report.head.layer == 3
    report.head.save(tmp_path / "head.safetensors")
    from engines.value_head import load_head

    assert load_head(tmp_path / "head.safetensors").layer == 3
