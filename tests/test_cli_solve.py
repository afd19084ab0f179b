"""`specs-local solve` end to end: real llama.cpp on tiny GGUFs, bad input, and
one real-model run on the development model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from app.cli import cli, main
from app.commands.common import SEARCH_OPTIONS
from app.search.events import Finished, SearchStarted, StepAccepted
from app.search.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]


def write_catalog(path: Path, draft: Path, target: Path, *, search: str = "") -> Path:
    """A user catalog whose `tiny` preset runs the given files."""
    path.write_text(
        f"""
[models.tiny-draft]
path = "{draft}"
file = "{draft.name}"
context = 512

[models.tiny-target]
path = "{target}"
file = "{target.name}"
context = 512

[presets.tiny]
draft = "tiny-draft"
target = "tiny-target"
reward = {{ kind = "judge", model = "tiny-target" }}
search = {{ max_steps = 3, max_step_tokens = 8, n = 2 {search} }}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def tiny_preset(tmp_path: Path, tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    catalog = write_catalog(tmp_path / "models.toml", tiny_qwen, tiny_qwen)
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    monkeypatch.setenv("SPECS_LOCAL_THREADS", "1")
    return catalog


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method", ["specs", "beam", "greedy"])
def test_solve_json_on_tiny_models(method: str, tiny_preset: Path, tmp_path: Path, capsys) -> None:
    trace = tmp_path / "run.jsonl"
    code, out, err = run_cli(
        [
            "solve",
            "What is 1 + 1?",
            "--preset",
            "tiny",
            "--method",
            method,
            "--seed",
            "3",
            "--json",
            "--trace",
            str(trace),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"answer", "steps", "stats", "solution"}
    assert result["method"] == method and result["preset"] == "tiny"
    assert result["steps"], "a search accepts at least one step"
    assert all(step["origin"] in ("draft", "target") for step in result["steps"])
    assert result["stats"]["wall_seconds"] > 0
    assert result["stats"]["models"]["target"]["generated"] + result["stats"]["models"]["target"]["prefilled"] > 0

    events = list(read_trace(trace))
    assert isinstance(events[0], SearchStarted) and isinstance(events[-1], Finished)
    accepted = [e for e in events if isinstance(e, StepAccepted)]
    assert [s["text"] for s in result["steps"]] == [e.text for e in accepted]
    assert events[-1].solution == result["solution"]


def test_solve_streams_steps_and_the_footer(tiny_preset: Path, capsys) -> None:
    code, out, err = run_cli(["solve", "What is 1 + 1?", "--preset", "tiny", "--seed", "1"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.lstrip().startswith("[ 0 target") for line in lines), out
    assert any(line.startswith("answer: ") for line in lines)
    assert "latency" in lines[-1] and "acceptance" in lines[-1]


def test_same_seed_gives_the_same_search(tiny_preset: Path, capsys) -> None:
    args = ["solve", "What is 2 + 2?", "--preset", "tiny", "--seed", "5", "--json", "--temperature", "0.8"]
    first = json.loads(run_cli(args, capsys)[1])
    second = json.loads(run_cli(args, capsys)[1])
    assert first["solution"] == second["solution"]
    assert [s["origin"] for s in first["steps"]] == [s["origin"] for s in second["steps"]]


@pytest.mark.parametrize(
    "args, says",
    [
        (["solve", "   "], "question is empty"),
        (["solve", "q", "--preset", "nope"], "Unknown preset 'nope'"),
        (["solve", "q", "--method", "magic"], "'magic' is not one of"),
        (["solve", "q", "--n", "0"], "Invalid --n"),
        (["solve", "q", "--temperature", "-1"], "Invalid --temperature"),
        (["solve", "q", "--n", "2", "--beam-width", "4"], "cannot exceed n=2"),
        (["solve", "q", "--tau-accept", "high"], "'high' is not a valid float"),
        (["solve", "q", "--bogus"], "No such option '--bogus'"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args: list[str], says: str, tiny_preset: Path, capsys) -> None:
    code, out, err = run_cli(args + ["--preset", "tiny"] if "--preset" not in args else args, capsys)
    assert code == 2
    assert says in err
    assert "Traceback" not in err and out == ""


def test_a_search_option_s_environment_twin_is_read_and_refused_like_the_flag(
    tiny_preset: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("SPECS_LOCAL_N", "0")
    code, out, err = run_cli(["solve", "q", "--preset", "tiny"], capsys)
    assert code == 2 and "Invalid --n" in err and out == ""


@pytest.mark.parametrize("name", ["solve", "bench", "calibrate", "tui"])
def test_commands_that_run_a_preset_share_its_options_and_their_twins(name: str) -> None:
    with click.Context(cli) as ctx:
        command = cli.get_command(ctx, name)
    assert command is not None
    twins = {p.name: p.envvar for p in command.params if isinstance(p, click.Option)}
    assert twins["preset"] == "SPECS_LOCAL_PRESET"
    assert (twins["threads"], twins["gpu_layers"]) == ("SPECS_LOCAL_THREADS", "SPECS_LOCAL_GPU_LAYERS")
    assert {field: twins[field] for _, field, _, _ in SEARCH_OPTIONS} == {
        field: "SPECS_LOCAL_" + field.upper() for _, field, _, _ in SEARCH_OPTIONS
    }
    assert ("yes" in twins) == (name != "tui")  # the app never downloads; it names the command that does


def test_a_question_longer_than_the_context_names_both_lengths(tiny_preset: Path, capsys) -> None:
    code, _out, err = run_cli(["solve", "add these " * 400, "--preset", "tiny"], capsys)
    assert code == 2
    assert "512" in err and "Traceback" not in err


def test_missing_models_are_named_with_the_command_that_fetches_them(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "none.toml"))
    code, _out, err = run_cli(["solve", "What is 12 + 30?", "--preset", "cpu-dev"], capsys)
    assert code == 2
    assert "qwen2.5-coder-0.5b-instruct" in err and "fetch-dev-models.sh" in err


def test_a_corrupt_model_file_is_one_sentence_not_a_crash(tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_qwen.read_bytes()[:5000])  # a download cut off
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "m.toml", broken, tiny_qwen)))
    code, _out, err = run_cli(["solve", "What is 1 + 1?", "--preset", "tiny"], capsys)
    assert code == 2
    assert "broken.gguf" in err and "Traceback" not in err


def test_the_command_line_entry_point_exits_2_in_a_fresh_process(tiny_preset: Path) -> None:
    """The console script itself (not only `main`) turns errors into exit codes."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "solve", "", "--preset", "tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: The question is empty")


@pytest.mark.real
def test_real_small_model_as_draft_target_and_judge_answers_42(
    dev_model_small: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The cpu-dev preset with the 0.5B development model in all three roles
    (a user file overrides the preset's target and judge)."""
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[presets.cpu-dev]\ntarget = "qwen2.5-coder-0.5b-instruct"\n'
        'reward = { kind = "judge", model = "qwen2.5-coder-0.5b-instruct" }\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(dev_model_small.parent))
    code, out, err = run_cli(
        ["solve", "What is 12 + 30?", "--preset", "cpu-dev", "--json", "--max-steps", "6", "--seed", "0"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["answer"] == "42", result["solution"]
    assert result["stats"]["models"]["draft"]["generated"] > 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda path: path.unlink(), "is no longer there; put target.gguf back there."),
        (lambda path: path.write_bytes(b"<html>Not found</html>"), "is not a GGUF file; put target.gguf back there."),
        (  # the loader's own check of the header
            lambda path: path.write_bytes(path.read_bytes()[:3000]),
            "the file is cut short inside its header (3,000 bytes); download it again.",
        ),
    ],
)
def test_a_model_file_changed_after_the_preset_found_it_is_one_sentence(
    change, says: str, tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys
) -> None:
    from app.commands import solve as solve_command
    from app.presets import resolve_preset

    draft, target = tmp_path / "draft.gguf", tmp_path / "target.gguf"
    for path in (draft, target):
        path.write_bytes(tiny_qwen.read_bytes())
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "m.toml", draft, target)))
    code, out, _ = run_cli(["models", "--json"], capsys)
    assert code == 0 and json.loads(out)["presets"]["tiny"]["ready"]

    def resolve_then_change(*args, **kwargs):  # the file changes after it was found, before it loads
        found = resolve_preset(*args, **kwargs)
        change(target)
        return found

    monkeypatch.setattr(solve_command, "resolve_preset", resolve_then_change)
    code, _out, err = run_cli(["solve", "What is 1 + 1?", "--preset", "tiny"], capsys)
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line in (f"error: {target}, the file of tiny-target, {says}", f"error: cannot load {target}: {says}")


def test_a_disk_that_fills_up_under_the_trace_keeps_its_whole_events_and_the_answer(
    tiny_preset: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from faults import FullDisk

    from app.search import trace as trace_module

    whole = tmp_path / "whole.jsonl"
    assert run_cli(["solve", "What is 1 + 1?", "--preset", "tiny", "--trace", str(whole)], capsys)[0] == 0
    lines = whole.read_bytes().splitlines(keepends=True)
    fits = sum(len(line) for line in lines[:3]) + 10  # three events and part of the fourth
    trace = tmp_path / "t.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(trace_module, "open", FullDisk(free=fits).open, raising=False)
        code, out, err = run_cli(["solve", "What is 1 + 1?", "--preset", "tiny", "--trace", str(trace)], capsys)
    assert code == 2
    assert "answer: " in out  # the search went on without its trace
    assert err.strip().splitlines()[-1] == (
        f"error: Cannot write the trace {trace} (No space left on device): it holds the first 3 events, each whole;"
        " free some space and solve again for the whole trace."
    )
    kept = trace.read_bytes()
    assert kept.count(b"\n") == 3 and kept.endswith(b"\n")  # the torn fourth line was cut off
    assert [type(e) for e in read_trace(trace)] == [type(e) for e in read_trace(whole)][:3]
