"""`bench --parallel K` on served models: the same result lines as a sequential
run (but for timings and their order), and refused for models loaded here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakevllm import FakeVLLM
from test_remote_runtime import local_catalog, served_catalog

from app.cli import main

PROBLEMS = [
    {"id": f"p{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b)}
    for i, (a, b) in enumerate([(12, 30), (40, 2), (1, 1), (7, 8), (3, 3), (20, 22)])
]
TIMINGS = {"latency", "wall_seconds", "overhead_seconds"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS), encoding="utf-8")
    return path


def content(out: Path) -> dict[tuple[str, str], dict]:
    """Each result line without its timings, by (problem, method)."""
    rows = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in TIMINGS:
            row.pop(key)
        for usage in row["models"].values():
            usage.pop("seconds")
            usage.pop("native_seconds")
        rows[(row["id"], row["method"])] = row
    return rows


def test_parallel_runs_give_the_lines_of_a_sequential_run(
    dataset, tiny_qwen, open_model, tmp_path, monkeypatch, capsys
) -> None:
    with FakeVLLM(open_model(tiny_qwen, n_seq_max=64), served=["tiny"], delay_s=0.01) as fake:
        monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(served_catalog(tmp_path / "m.toml", fake.url, fake.url)))
        ask = ["bench", "--dataset", str(dataset), "--preset", "served", "--methods", "specs,greedy", "--no-progress"]
        assert main([*ask, "--out", str(tmp_path / "one")]) == 0, capsys.readouterr().err
        assert main([*ask, "--out", str(tmp_path / "four"), "--parallel", "4"]) == 0, capsys.readouterr().err
    one, four = content(tmp_path / "one"), content(tmp_path / "four")
    assert len(one) == 2 * len(PROBLEMS) and one == four
    assert all(row["error"] is None for row in one.values())


def test_parallel_is_refused_for_models_loaded_here(dataset, tiny_qwen, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(local_catalog(tmp_path / "m.toml", tiny_qwen)))
    code = main(
        ["bench", "--dataset", str(dataset), "--preset", "local", "--out", str(tmp_path / "o"), "--parallel", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--parallel runs problems at once on model servers, but preset local runs its draft, target, reward" in err
    assert not (tmp_path / "o" / "results.jsonl").exists()
