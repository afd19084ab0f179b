"""Calibration: the Pareto front, the objectives, and the saved override."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.commands import bench as bench_command
from app.config import load_catalog
from app.errors import UserError
from app.eval.calibrate import (
    Objective,
    Point,
    choose,
    grid_arms,
    pareto_front,
    parse_objective,
    table,
)
from engines.testing.scripted import FakeClock, scripted_engines

BASELINE = Point("beam", {}, 0.80, 10.0, 100)
A = Point("A", {"beta": 10}, 0.81, 9.0, 100)
B = Point("B", {"beta": 5}, 0.795, 7.0, 100)
C = Point("C", {"beta": 2}, 0.70, 4.0, 100)
D = Point("D", {"beta": 6}, 0.79, 8.0, 100)  # beaten by B on both counts
E = Point("E", {"beta": 20}, 0.81, 12.0, 100)  # as accurate as A, slower
POINTS = [A, B, C, D, E]


def test_pareto_front() -> None:
    assert pareto_front(POINTS) == [C, B, A]


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("fastest-within:1.0", B),
        ("fastest-within:0", A),
        ("fastest-within:10", C),
        ("fastest-within:0.5", B),
        ("fastest-within:0.4", A),
        ("most-accurate", A),
    ],
)
def test_objectives_pick_on_the_front(objective: str, expected: Point) -> None:
    chosen = choose(POINTS, parse_objective(objective), BASELINE)
    assert chosen == expected
    assert chosen in pareto_front(POINTS)


def test_no_point_close_enough_is_one_sentence() -> None:
    with pytest.raises(
        UserError, match=r"No setting is within 1 points of beam search's 90.0% \(the best reached 81.0%\)"
    ):
        choose(POINTS, Objective("fastest-within", 1.0), Point("beam", {}, 0.9, 10.0, 100))


@pytest.mark.parametrize("text", ["fastest", "fastest-within:", "fastest-within:x", "accurate"])
def test_bad_objective(text: str) -> None:
    with pytest.raises(UserError, match="Unknown --objective"):
        parse_objective(text)


def test_grid_and_table() -> None:
    arms = grid_arms([5, 10], [7], [0.5, 0.7])
    assert [a.label for a in arms] == [
        "beam",
        "specs[beta=5,tau_accept=7,tau_switch=0.5]",
        "specs[beta=5,tau_accept=7,tau_switch=0.7]",
        "specs[beta=10,tau_accept=7,tau_switch=0.5]",
        "specs[beta=10,tau_accept=7,tau_switch=0.7]",
    ]
    assert arms[1].method == "specs" and arms[1].overrides == {"beta": 5, "tau_accept": 7, "tau_switch": 0.5}
    text = table(POINTS, BASELINE, B).splitlines()
    assert text[1].split() == ["beam", "80.0%", "10.00", "1.00", "baseline"]
    assert text[2].split() == ["C", "70.0%", "4.00", "0.40", "yes"]
    assert text[3].split() == ["*", "B", "79.5%", "7.00", "0.70", "yes"]
    assert text[4].split() == ["D", "79.0%", "8.00", "0.80"]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    config = tmp_path / "user" / "models.toml"
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(config))

    clock = FakeClock()

    @contextmanager
    def fake_open(preset: Any, settings: Any, **kwargs: Any) -> Iterator[Any]:
        yield scripted_engines(clock=clock)

    monkeypatch.setattr(bench_command, "open_preset", fake_open)
    monkeypatch.setattr(bench_command, "clock", clock)
    data = tmp_path / "problems.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "problem": f"What is 12 + 30? ({i})", "answer": "42"}) + "\n" for i in range(3)
        )
    )
    return data


def calibrate(data: Path, out: Path, *args: str) -> int:
    # tau_accept = -100 accepts every draft: faster, but the draft's slips make it wrong
    return main(
        [
            "calibrate",
            "--dataset",
            str(data),
            "--preset",
            "cpu-dev",
            "--out",
            str(out),
            "--no-progress",
            "--betas",
            "10",
            "--tau-accepts=-100,6",
            "--tau-switches",
            "0.7",
            *args,
        ]
    )


def test_calibrate_saves_the_fastest_setting_within_a_point(
    scripted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = dict(load_catalog().preset("cpu-dev").search)
    assert calibrate(scripted, tmp_path / "sweep", "--yes") == 0
    rows = {
        line.split()[-5 if line.startswith("*") else 0]: line.split()
        for line in capsys.readouterr().out.splitlines()[1:4]
    }
    # beam is right everywhere; accepting every draft is faster but wrong, tau_accept 6 is as right and faster than beam
    beam, eager, chosen = (
        rows[k]
        for k in ("beam", "specs[beta=10,tau_accept=-100,tau_switch=0.7]", "specs[beta=10,tau_accept=6,tau_switch=0.7]")
    )
    assert beam[1] == "100.0%" and eager[1] == "0.0%" and chosen[:3] == ["*", chosen[1], "100.0%"]
    assert float(eager[2]) < float(chosen[3]) < float(beam[2])
    preset = load_catalog().preset("cpu-dev")
    # the chosen values replace the preset's; its other settings stay
    assert shipped["tau_accept"] != 6.0 and shipped["max_steps"] == 12
    assert preset.search == {**shipped, "beta": 10.0, "tau_accept": 6.0, "tau_switch": 0.7}
    assert preset.settings().tau_accept == 6.0

    # a looser objective takes the fast, wrong setting; the sweep is not run again
    assert calibrate(scripted, tmp_path / "sweep", "--yes", "--objective", "fastest-within:100") == 0
    assert len((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()) == 9
    assert load_catalog().preset("cpu-dev").settings().tau_accept == -100.0


def test_calibrate_dry_run_writes_nothing(scripted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibrate(scripted, tmp_path / "sweep", "--dry-run", "--objective", "most-accurate") == 0
    out = capsys.readouterr().out
    assert "Dry run: would write {'beta': 10.0, 'tau_accept': 6.0, 'tau_switch': 0.7}" in out
    assert not (tmp_path / "user" / "models.toml").exists()


def test_calibrate_asks_before_writing(
    scripted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import click

    monkeypatch.setattr(click, "confirm", lambda *args, **kwargs: False)
    assert calibrate(scripted, tmp_path / "sweep") == 0
    assert "Nothing written." in capsys.readouterr().out
    assert not (tmp_path / "user" / "models.toml").exists()


def test_calibrate_bad_grid_is_one_sentence(scripted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "calibrate",
                "--dataset",
                str(scripted),
                "--preset",
                "cpu-dev",
                "--out",
                str(tmp_path / "s"),
                "--tau-switches",
                "2",
            ]
        )
        == 2
    )
    assert "error: Invalid --tau-switch" in capsys.readouterr().err
    assert main(["calibrate", "--dataset", str(scripted), "--betas", "ten"]) == 2
    assert "error: --betas takes numbers separated by commas" in capsys.readouterr().err
    assert main(["calibrate", "--dataset", str(scripted), "--tau-accept", "3"]) == 2
    assert "error: --tau-accept is what calibrate sweeps; give its values with --tau-accepts instead." in (
        capsys.readouterr().err
    )
