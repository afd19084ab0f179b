"""`solve` with a value-head preset on tiny GGUFs, and the head file's bad inputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from engines.value_head import ValueHead

TINY_EMBD = 64  # scripts/tiny_gguf.py's qwen-like default width


def write_value_head_catalog(path: Path, model: Path, head: Path, *, sha256: str | None = None) -> Path:
    pin = f'sha256 = "{sha256}"\n' if sha256 else ""
    path.write_text(
        f"""
[models.tiny]
path = "{model}"
file = "{model.name}"
context = 512
{pin}
[presets.tiny-head]
draft = "tiny"
target = "tiny"
reward = {{ kind = "value-head", model = "tiny", head = "{head}" }}
search = {{ max_steps = 3, max_step_tokens = 8, n = 2 }}
""",
        encoding="utf-8",
    )
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _head(hidden: int, sha: str) -> ValueHead:
    rng = np.random.default_rng(0)
    return ValueHead(rng.normal(size=hidden) * 0.1, 0.0, np.zeros(hidden), np.ones(hidden), sha)


@pytest.fixture
def head_preset(tmp_path: Path, tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    head = tmp_path / "tiny.safetensors"
    _head(TINY_EMBD, _sha(tiny_qwen)).save(head)
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_value_head_catalog(tmp_path / "m.toml", tiny_qwen, head)))
    monkeypatch.setenv("SPECS_LOCAL_THREADS", "1")
    return head


@pytest.mark.parametrize("method", ["specs", "beam"])
def test_solve_with_a_value_head(method: str, head_preset: Path, capsys) -> None:
    code = main(["solve", "What is 1 + 1?", "--preset", "tiny-head", "--method", method, "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    reward = result["stats"]["models"]["reward"]
    # The head reads states the target already computed: no tokens of its own.
    assert reward["generated"] == 0 and reward["prefilled"] == 0
    assert all(0.0 <= step["reward"] <= 1.0 for step in result["steps"] if step.get("reward") is not None)


def _error(capsys) -> tuple[int, str]:
    code = main(["solve", "What is 1 + 1?", "--preset", "tiny-head", "--method", "beam", "--json"])
    _, err = capsys.readouterr()
    return code, err


def test_missing_head(tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys) -> None:
    catalog = write_value_head_catalog(tmp_path / "m.toml", tiny_qwen, tmp_path / "none.safetensors")
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    code, err = _error(capsys)
    assert code == 2 and "none.safetensors does not exist" in err and "Traceback" not in err


def test_damaged_head(head_preset: Path, capsys) -> None:
    head_preset.write_bytes(head_preset.read_bytes()[:50])
    code, err = _error(capsys)
    assert code == 2 and "damaged" in err and "train-head" in err and "Traceback" not in err


def test_head_of_another_model_file(head_preset: Path, capsys) -> None:
    _head(TINY_EMBD, "0" * 64).save(head_preset)
    code, err = _error(capsys)
    assert code == 2 and "another model file" in err and "Traceback" not in err


def test_head_of_another_width(head_preset: Path, tiny_qwen: Path, capsys) -> None:
    _head(TINY_EMBD * 2, _sha(tiny_qwen)).save(head_preset)
    code, err = _error(capsys)
    assert code == 2 and f"hidden size {TINY_EMBD * 2}" in err and "Traceback" not in err


def test_the_judge_is_one_flag_away(head_preset: Path, capsys) -> None:
    code = main(["solve", "What is 1 + 1?", "--preset", "tiny-head", "--method", "beam", "--reward", "judge", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # The yes/no judge reads text: its model time and tokens are its own.
    assert json.loads(out)["stats"]["models"]["reward"]["prefilled"] > 0


def test_a_value_head_needs_a_head_file(tmp_path: Path, tiny_qwen: Path, monkeypatch, capsys) -> None:
    from test_cli_solve import write_catalog

    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "m.toml", tiny_qwen, tiny_qwen)))
    code = main(["solve", "What is 1 + 1?", "--preset", "tiny", "--reward", "value-head"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a head file" in err and "Traceback" not in err


def _solve_rewards(capsys) -> list[float]:
    code = main(["solve", "What is 1 + 1?", "--preset", "tiny-head", "--method", "beam", "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [step["reward"] for step in json.loads(out)["steps"] if step.get("reward") is not None]


def test_a_head_reads_the_layer_its_file_names(head_preset: Path, tiny_qwen: Path, capsys) -> None:
    final = _solve_rewards(capsys)
    replace(_head(TINY_EMBD, _sha(tiny_qwen)), layer=0).save(head_preset)
    middle = _solve_rewards(capsys)
    assert final and middle and final != middle
    assert all(0.0 <= r <= 1.0 for r in middle)


def test_a_head_on_a_layer_the_target_lacks(head_preset: Path, tiny_qwen: Path, capsys) -> None:
    replace(_head(TINY_EMBD, _sha(tiny_qwen)), layer=7).save(head_preset)
    code, err = _error(capsys)
    assert code == 2 and "layers 0 to 1" in err and "layer 7" in err and "Traceback" not in err
