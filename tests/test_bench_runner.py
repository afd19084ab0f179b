"""The bench runner end to end on scripted engines: lines, resume, refusal, interruption."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.errors import UserError
from app.eval.datasets import Problem
from app.eval.runner import (
    Arm,
    claim_out_dir,
    parse_methods,
    problem_seed,
    read_results,
    run_bench,
    trace_name,
)
from app.search import run as search_run
from app.search.events import Finished
from app.search.settings import SearchSettings
from app.search.trace import read_trace
from engines.testing.scripted import ARITHMETIC_QUESTION, scripted_engines

PROBLEMS = [
    Problem("p0", ARITHMETIC_QUESTION, "42"),
    Problem("p1", "Add 12 and 30.", "42"),
    Problem("p2", "What is 3 + 4?", "7"),  # the script always answers 42
]
ARMS = parse_methods("specs,beam,greedy")
CONFIG = {
    "dataset": {"name": "t", "source": "t.jsonl"},
    "preset": "scripted",
    "models": {},
    "settings": SearchSettings().model_dump(),
    "runtime": {"threads": None, "n_gpu_layers": None},
}


class Factory:
    """Scripted engines behind the runner's context-manager factory, counting opens."""

    def __init__(self, **kwargs: Any) -> None:
        self.engines = scripted_engines(**kwargs)
        self.opened = 0

    @contextmanager
    def __call__(self) -> Iterator[Any]:
        self.opened += 1
        yield self.engines


def bench(
    out: Path,
    factory: Factory,
    problems: list[Problem] = PROBLEMS,
    arms: list[Arm] = ARMS,
    settings: SearchSettings | None = None,
    config: dict[str, Any] = CONFIG,
    **kwargs: Any,
):
    return run_bench(
        problems, arms, settings or SearchSettings(), out, factory, config=config, clock=factory.engines.clock, **kwargs
    )


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_every_problem_and_method_gets_one_line(tmp_path: Path) -> None:
    factory = Factory()
    outcome = bench(tmp_path, factory)
    assert (outcome.total, outcome.already, outcome.ran, outcome.errors, outcome.interrupted) == (9, 0, 9, 0, False)
    rows = lines(tmp_path)
    # interleaved problem by problem, the order of methods rotating
    assert [(r["id"], r["method"]) for r in rows] == [
        ("p0", "specs"),
        ("p0", "beam"),
        ("p0", "greedy"),
        ("p1", "beam"),
        ("p1", "greedy"),
        ("p1", "specs"),
        ("p2", "greedy"),
        ("p2", "specs"),
        ("p2", "beam"),
    ]
    for row in rows:
        assert list(row) == [
            "id", "method", "search", "seed", "answer", "reference", "correct", "judge", "latency",
            "wall_seconds", "overhead_seconds", "models", "steps", "draft_steps", "target_steps",
            "deferrals", "switches", "answer_forced", "acceptance", "error",
        ]  # fmt: skip
        assert list(row["models"]["target"]) == ["seconds", "native_seconds", "generated", "prefilled"]
        assert row["answer"] == "42"
        assert row["correct"] is (row["reference"] == "42")
        assert row["seed"] == problem_seed(0, row["id"])  # same seed for every method of a problem
        assert row["error"] is None
        # the fake clock makes the measured latency exactly the search's own wall time
        assert row["latency"] == pytest.approx(row["wall_seconds"])
        assert row["latency"] > 0
        assert set(row["models"]) >= {"target", "reward"}
        assert row["steps"] == row["draft_steps"] + row["target_steps"]
        assert row["answer_forced"] is False  # the scripted solutions end in a box
    specs = next(r for r in rows if r["method"] == "specs")
    assert specs["models"]["draft"]["generated"] > 0
    assert specs["deferrals"] == 1 and specs["acceptance"] == pytest.approx(specs["draft_steps"] / specs["steps"])
    beam = next(r for r in rows if r["method"] == "beam")
    assert "draft" not in beam["models"] or beam["models"]["draft"]["generated"] == 0
    assert len({problem_seed(0, p.id) for p in PROBLEMS}) == 3
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["arms"] == {a: {"method": a, "overrides": {}} for a in ("specs", "beam", "greedy")}
    assert config["settings"]["beta"] == 10.0


def test_a_rerun_skips_finished_runs_and_extends(tmp_path: Path) -> None:
    factory = Factory()
    bench(tmp_path, factory, problems=PROBLEMS[:2])
    before = lines(tmp_path)
    again = bench(tmp_path, factory, problems=PROBLEMS[:2])
    assert (again.ran, again.already) == (0, 6)
    assert factory.opened == 1  # nothing to do: the models are not even loaded
    more = bench(tmp_path, factory)  # a larger --limit runs only the new problem
    assert (more.ran, more.already) == (3, 6)
    after = lines(tmp_path)
    assert after[:6] == before
    assert {r["id"] for r in after[6:]} == {"p2"}


def test_another_configuration_is_refused(tmp_path: Path) -> None:
    factory = Factory()
    bench(tmp_path, factory, problems=PROBLEMS[:1])
    other = {**CONFIG, "settings": SearchSettings(beta=5).model_dump()}
    with pytest.raises(
        UserError, match=r"holds results of another configuration \(settings\.beta was 10\.0, now 5\.0\)"
    ):
        bench(tmp_path, factory, config=other)
    with pytest.raises(UserError, match=r"preset was 'scripted', now 'paper'"):
        bench(tmp_path, factory, config={**CONFIG, "preset": "paper"})
    with pytest.raises(UserError, match=r"arms\.specs was"):
        claim_out_dir(tmp_path, CONFIG, [Arm("specs", "specs", {"beta": 1.0})])
    assert len(lines(tmp_path)) == 3  # nothing mixed in


def test_a_config_the_disk_refuses_leaves_the_old_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claim_out_dir(tmp_path, CONFIG, [Arm("specs", "specs")])
    before = (tmp_path / "config.json").read_text()
    real_write = Path.write_text

    def half_then_full(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write(self, text[: len(text) // 2], *args, **kwargs)  # what fits, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(UserError, match=r"config\.json \(No space left on device\); free some space"):
        claim_out_dir(tmp_path, CONFIG, [Arm("specs", "specs"), Arm("beam", "beam")])
    monkeypatch.undo()
    assert (tmp_path / "config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_keyboard_interrupt_keeps_finished_runs_and_a_rerun_resumes(tmp_path: Path) -> None:
    calls = 0

    def interrupted_search(*args: Any, **kwargs: Any) -> Finished:
        nonlocal calls
        calls += 1
        if calls == 4:  # Ctrl-C while the second problem runs
            raise KeyboardInterrupt
        return search_run(*args, **kwargs)

    factory = Factory()
    outcome = bench(tmp_path, factory, search=interrupted_search)
    assert outcome.interrupted and outcome.ran == 3 and outcome.remaining == 6
    assert [r["id"] for r in lines(tmp_path)] == ["p0"] * 3
    resumed = bench(tmp_path, factory)
    assert (resumed.already, resumed.ran, resumed.interrupted) == (3, 6, False)
    assert sorted((r["id"], r["method"]) for r in lines(tmp_path)) == sorted(
        (p.id, a.label) for p in PROBLEMS for a in ARMS
    )


def test_should_stop_between_problems(tmp_path: Path) -> None:
    factory = Factory()

    def written() -> int:
        return len(lines(tmp_path)) if (tmp_path / "results.jsonl").exists() else 0

    outcome = bench(tmp_path, factory, should_stop=lambda: written() >= 3)
    assert outcome.interrupted and outcome.ran == 3


def test_a_search_cancelled_mid_run_writes_no_line(tmp_path: Path) -> None:
    factory = Factory()
    results = tmp_path / "results.jsonl"
    asked_in_second_run = 0
    finished: list[Finished] = []

    def stop_inside_the_second_run() -> bool:
        nonlocal asked_in_second_run
        if results.exists() and len(lines(tmp_path)) == 1:
            asked_in_second_run += 1
        # the first ask is the runner's own, between runs; later ones come from the search
        return asked_in_second_run >= 3

    def recording_search(*args: Any, **kwargs: Any) -> Finished:
        finished.append(search_run(*args, **kwargs))
        return finished[-1]

    outcome = bench(tmp_path, factory, should_stop=stop_inside_the_second_run, search=recording_search)
    assert outcome.interrupted
    assert [f.cancelled for f in finished] == [False, True]
    assert [(r["id"], r["method"]) for r in lines(tmp_path)] == [("p0", "specs")]


def test_a_failing_problem_is_recorded_and_retried_on_request(tmp_path: Path) -> None:
    factory = Factory(n_ctx=300)
    problems = [PROBLEMS[0], Problem("long", "many words " * 100, "1")]
    outcome = bench(tmp_path, factory, problems=problems, arms=parse_methods("greedy"))
    assert (outcome.ran, outcome.errors) == (2, 1)
    failed = next(r for r in lines(tmp_path) if r["id"] == "long")
    assert failed["error"].startswith("ContextFullError") and failed["correct"] is False
    assert bench(tmp_path, factory, problems=problems, arms=parse_methods("greedy")).ran == 0
    retried = bench(tmp_path, factory, problems=problems, arms=parse_methods("greedy"), retry_errors=True)
    assert retried.ran == 1
    assert len(read_results(tmp_path)) == 2  # the latest line per run counts


def test_a_torn_last_line_is_redone(tmp_path: Path) -> None:
    factory = Factory()
    bench(tmp_path, factory, problems=PROBLEMS[:1])
    path = tmp_path / "results.jsonl"
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:2]) + text[2][:25])  # killed while writing the third line
    outcome = bench(tmp_path, factory, problems=PROBLEMS[:1])
    assert outcome.ran == 1
    assert len(read_results(tmp_path)) == 3
    assert path.read_text().endswith("\n")


def test_traces_are_saved_per_run(tmp_path: Path) -> None:
    factory = Factory()
    bench(tmp_path / "out", factory, problems=PROBLEMS[:1], trace_dir=tmp_path / "traces")
    for arm in ARMS:
        events = list(read_trace(tmp_path / "traces" / trace_name("p0", arm.label)))
        assert type(events[0]).__name__ == "SearchStarted"
        assert isinstance(events[-1], Finished) and events[-1].answer == "42"
    assert trace_name("a/b c", "specs[beta=5]") == "a_b_c.specs_beta=5_.jsonl"


def test_methods_needing_a_draft_are_refused_without_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="specs needs a draft model"):
        bench(tmp_path, Factory(draft=None))
    assert bench(tmp_path / "b", Factory(draft=None), arms=parse_methods("beam")).ran == 3


def test_arm_overrides_reach_the_search(tmp_path: Path) -> None:
    arms = [Arm("eager", "specs", {"tau_accept": -100.0}), Arm("specs", "specs")]
    bench(tmp_path, Factory(), problems=PROBLEMS[:1], arms=arms)
    by_arm = {r["method"]: r for r in lines(tmp_path)}
    # accepting every draft keeps the draft's wrong ones step
    assert by_arm["eager"]["answer"] != "42" and by_arm["eager"]["settings"] == {"tau_accept": -100.0}
    assert by_arm["specs"]["answer"] == "42" and "settings" not in by_arm["specs"]


def test_unknown_methods_are_one_sentence() -> None:
    with pytest.raises(UserError, match="Unknown method 'bem' in --methods; choose from specs, beam"):
        parse_methods("specs,bem")
    assert [a.label for a in parse_methods(" beam, greedy ,beam")] == ["beam", "greedy"]
