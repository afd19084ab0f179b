"""`specs-local bench` through the CLI, on scripted engines in place of the preset's models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.commands import bench as bench_command
from engines.testing.scripted import FakeClock, scripted_engines


@pytest.fixture(autouse=True)
def scripted_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Every preset opens scripted engines; records what each open was asked for."""
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "user-models.toml"))
    opened: list[dict[str, Any]] = []
    clock = FakeClock()

    @contextmanager
    def fake_open(preset: Any, settings: Any, **kwargs: Any) -> Iterator[Any]:
        opened.append({"preset": preset.name, "settings": settings, **kwargs})
        yield scripted_engines(clock=clock)

    monkeypatch.setattr(bench_command, "open_preset", fake_open)
    monkeypatch.setattr(bench_command, "clock", clock)
    return opened


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = [
        {"id": "p0", "problem": "What is 12 + 30?", "answer": "42"},
        {"id": "p1", "problem": "Add 30 to 12."},  # line 2: no answer
        {"id": "p2", "problem": "What is 40 + 2?", "answer": "42"},
        {"id": "p3", "problem": "What is 1 + 1?", "answer": "2"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bench(*args: str) -> int:
    return main(["bench", "--no-progress", *args])


def results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_bench_end_to_end(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], scripted_models: list[dict[str, Any]]
) -> None:
    out = tmp_path / "out"
    code = bench(
        "--dataset",
        str(dataset),
        "--methods",
        "specs,beam,greedy",
        "--preset",
        "cpu-dev",
        "--out",
        str(out),
        "--n",
        "2",
        "--trace-dir",
        str(tmp_path / "traces"),
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: skipped 1 rows" in captured.err and "line 2: no answer" in captured.err
    rows = results(out)
    assert len(rows) == 9 and {r["id"] for r in rows} == {"p0", "p2", "p3"}
    assert sum(r["correct"] for r in rows) == 6  # p3's answer is 2, the script says 42
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "cpu-dev" and config["settings"]["n"] == 2
    assert config["settings"]["max_steps"] == 12  # the preset's own search table
    assert scripted_models[0]["settings"].n == 2
    for name in ("summary.json", "report.md", "accuracy_latency.png"):
        assert (out / name).is_file()
    assert len(list((tmp_path / "traces").glob("*.jsonl"))) == 9
    assert "specs" in captured.out and "66.7% (2/3)" in captured.out
    assert "Claim" in captured.out

    # the same command again: nothing left to run, the models are not opened
    assert (
        bench(
            "--dataset",
            str(dataset),
            "--methods",
            "specs,beam,greedy",
            "--preset",
            "cpu-dev",
            "--out",
            str(out),
            "--n",
            "2",
        )
        == 0
    )
    assert len(scripted_models) == 1 and len(results(out)) == 9

    # the report alone, against another reference method
    assert bench("--report-only", "--out", str(out), "--reference", "greedy") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "greedy"
    assert summary["methods"]["greedy"]["latency_ratio"]["value"] == 1.0


def test_short_name_command_from_the_brief(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text(
        "".join(json.dumps({"id": f"gsm8k-{i}", "problem": f"Question {i}?", "answer": "42"}) + "\n" for i in range(40))
    )
    monkeypatch.setenv("SPECS_LOCAL_DATA_DIR", str(data))
    out = tmp_path / "gsm8k-run"
    assert (
        bench(
            "--dataset",
            "gsm8k",
            "--methods",
            "specs,beam,greedy",
            "--preset",
            "cpu-dev",
            "--limit",
            "3",
            "--out",
            str(out),
        )
        == 0
    ), capsys.readouterr().err
    assert sorted({r["id"] for r in results(out)}) == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]


def test_progress_bar_runs(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "bench",
                "--dataset",
                str(dataset),
                "--methods",
                "greedy",
                "--preset",
                "cpu-dev",
                "--out",
                str(tmp_path / "o"),
                "--limit",
                "2",
            ]
        )
        == 0
    )
    assert "greedy 2/2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "specs,bem"], "error: Unknown method 'bem' in --methods"),
        (["--dataset", "missing.jsonl"], "error: Dataset file missing.jsonl does not exist"),
        (["--preset", "nope"], "error: Unknown preset 'nope'"),
        (["--beta", "-1"], "error: Invalid --beta"),
        (["--ids", "zz"], "has no problem with id zz"),
        (["--offset", "10"], "select no problem"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    args: list[str], message: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--dataset": str(dataset), "--methods": "greedy", "--preset": "cpu-dev", "--out": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    code = bench(*[x for pair in base.items() for x in pair])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0]


def test_a_directory_of_another_configuration_is_refused(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o")
    assert bench("--dataset", str(dataset), "--methods", "greedy", "--preset", "cpu-dev", "--out", out) == 0
    capsys.readouterr()
    assert (
        bench(
            "--dataset",
            str(dataset),
            "--methods",
            "greedy",
            "--preset",
            "cpu-dev",
            "--out",
            out,
            "--temperature",
            "0.9",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "holds results of another configuration (settings.temperature was 0.3, now 0.9)" in err


def test_ctrl_c_keeps_results_and_says_how_to_resume(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    @contextmanager
    def interrupting(preset: Any, settings: Any, **kwargs: Any) -> Iterator[Any]:
        engines = scripted_engines()
        score = engines.reward.score
        calls = 0

        def score_then_interrupt(*args: Any, **kw: Any) -> list[float]:
            nonlocal calls
            calls += 1
            if calls > 12:  # well into the second problem
                raise KeyboardInterrupt
            return score(*args, **kw)

        engines.reward.score = score_then_interrupt
        yield engines

    monkeypatch.setattr(bench_command, "open_preset", interrupting)
    out = tmp_path / "o"
    args = ["--dataset", str(dataset), "--methods", "specs,beam", "--preset", "cpu-dev", "--out", str(out)]
    assert bench(*args) == 130
    err = capsys.readouterr().err
    assert "Interrupted with" in err and "the same command resumes from there" in err
    kept = results(out)
    assert 0 < len(kept) < 6
    assert not (out / "report.md").exists()

    @contextmanager
    def plain(preset: Any, settings: Any, **kwargs: Any) -> Iterator[Any]:
        yield scripted_engines()

    monkeypatch.setattr(bench_command, "open_preset", plain)
    assert bench(*args) == 0
    assert results(out)[: len(kept)] == kept and len(results(out)) == 6


def test_a_preset_without_a_draft_refuses_specs_before_loading(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str], scripted_models: list[dict[str, Any]]
) -> None:
    (tmp_path / "user-models.toml").write_text(
        '[presets.solo]\ntarget = "qwen2.5-coder-1.5b-instruct"\n'
        'reward = { kind = "judge", model = "qwen2.5-coder-1.5b-instruct" }\n'
    )
    assert (
        bench("--dataset", str(dataset), "--methods", "beam,specs", "--preset", "solo", "--out", str(tmp_path / "o"))
        == 2
    )
    assert "specs needs a draft model and preset solo has none" in capsys.readouterr().err
    assert scripted_models == []


def test_a_full_disk_keeps_the_finished_runs_whole_and_the_rerun_resumes(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from faults import FullDisk

    from app.eval import runner

    args = ["--dataset", str(dataset), "--methods", "greedy", "--preset", "cpu-dev"]
    assert bench(*args, "--out", str(tmp_path / "clean")) == 0
    clean = (tmp_path / "clean" / "results.jsonl").read_bytes()
    first_line = clean.index(b"\n") + 1
    disk = FullDisk(free=first_line + 40)  # the first result fits, the second only in part
    out = tmp_path / "o"
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(runner, "open", disk.open, raising=False)
        assert bench(*args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: Cannot write {out / 'results.jsonl'} (No space left on device); the runs finished before are"
        " kept whole in it: free some space and run the same command again to resume."
    ]
    assert "Traceback" not in err and disk.refused == 1
    kept = (out / "results.jsonl").read_bytes()
    assert kept.count(b"\n") == 1 and kept.endswith(b"\n")  # the torn second line was cut off
    assert json.loads(kept)["id"] == "p0"
    assert json.loads((out / "config.json").read_text())["preset"] == "cpu-dev"

    assert bench(*args, "--out", str(out)) == 0
    rows = results(out)
    assert [r["id"] for r in rows] == ["p0", "p2", "p3"]  # p0 kept, the rest run once each
    assert rows[0] == json.loads(kept)


def test_a_report_the_disk_refuses_names_the_command_that_writes_it_again(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.eval import report as report_module

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "plot", refuse)
    out = tmp_path / "o"
    assert bench("--dataset", str(dataset), "--methods", "greedy", "--preset", "cpu-dev", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert (
        f"error: Cannot write the report in {out} (No space left on device); the results stay in"
        f" {out / 'results.jsonl'}: free some space and run `specs-local bench --report-only --out {out}`."
    ) in err.splitlines()
    assert len(results(out)) == 3


def test_a_trace_the_disk_cuts_short_is_written_again_with_its_run(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from faults import FullDisk

    from app.search import trace as trace_module

    out, traces = tmp_path / "o", tmp_path / "traces"
    args = ["--dataset", str(dataset), "--methods", "greedy", "--preset", "cpu-dev", "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(trace_module, "open", FullDisk(free=3000).open, raising=False)
        assert bench(*args, "--trace-dir", str(traces)) == 2
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: Cannot write the trace {traces}/") and "(No space left on device)" in error
    assert error.endswith("each whole; free some space and run the same command again to resume.")
    assert not (out / "results.jsonl").is_file() or len(results(out)) < 3  # the run whose trace was cut is not kept
    assert bench(*args, "--trace-dir", str(traces)) == 0
    assert {r["id"] for r in results(out)} == {"p0", "p2", "p3"} and len(results(out)) == 3
    for path in traces.glob("*.jsonl"):
        assert path.read_bytes().endswith(b"\n")
        assert '"Finished"' in path.read_text().splitlines()[-1]
