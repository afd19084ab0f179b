"""`specs-local doctor`: build, hardware, and the memory each preset needs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from gguf import GGUFReader

from app.cli import main
from app.commands import doctor
from app.config import dump_toml
from app.runtime import sequence_capacity
from app.search.settings import SearchSettings
from engines import system

TINY_KV_PER_TOKEN = 2 * 2 * (16 + 16) * 2  # scripts/tiny_gguf.py's shape, f16


@pytest.fixture
def catalog(hub_env: Path, tiny_gguf: Callable[..., bytes]) -> Path:
    """Two tiny models on disk (by path) and one that is only in the catalog."""
    models = hub_env / "mine"
    models.mkdir()
    (models / "draft.gguf").write_bytes(tiny_gguf("qwen", seed=1))
    (models / "target.gguf").write_bytes(tiny_gguf("qwen", seed=2))
    (hub_env / "user-models.toml").write_text(
        dump_toml(
            {
                "models": {
                    "draft": {"file": "draft.gguf", "path": str(models / "draft.gguf")},
                    "target": {"file": "target.gguf", "path": str(models / "target.gguf"), "context": 1024},
                    "remote": {"repo": "org/remote-GGUF", "file": "remote-Q4_K_M.gguf", "size": 2_000_000_000},
                },
                "presets": {
                    "here": {
                        "draft": "draft",
                        "target": "target",
                        "reward": {"kind": "judge", "model": "target"},
                        "search": {"n": 16, "beam_width": 4},
                    },
                    "away": {"draft": "draft", "target": "remote", "reward": {"kind": "judge", "model": "target"}},
                },
            }
        )
    )
    return hub_env


def doctor_json(capsys: pytest.CaptureFixture[str]) -> dict:
    code = main(["doctor", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_memory_of_a_preset_whose_files_are_here(catalog: Path, capsys) -> None:
    report = doctor_json(capsys)
    here = report["presets"]["here"]
    assert here["estimated"] is False
    # Both contexts are capped at the tiny models' 512-token training context.
    assert here["kv_cache"] == 2 * TINY_KV_PER_TOKEN * 512
    reader = GGUFReader(catalog / "mine" / "draft.gguf")  # the gguf package's own reader, as a cross-check
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rows = sequence_capacity(SearchSettings(n=16, beam_width=4))  # 72 sequences: more rows than the 64 minimum
    assert here["logits"] == 2 * n_vocab * rows * 4
    assert here["weights"] == sum(p.stat().st_size for p in (catalog / "mine").iterdir())
    assert here["total"] == here["weights"] + here["kv_cache"] + here["logits"]
    assert [m["roles"] for m in here["models"]] == [["target", "reward"], ["draft"]]  # the judge shares the target


def test_memory_is_estimated_for_files_not_downloaded(catalog: Path, capsys) -> None:
    away = doctor_json(capsys)["presets"]["away"]
    assert away["estimated"] is True
    remote = next(m for m in away["models"] if m["model"] == "remote")
    assert remote["measured"] is False and remote["weights"] == 2_000_000_000
    assert remote["kv_cache"] == int(2.0 * doctor._KV_PER_TOKEN_PER_GB) * 4096
    reward = next(m for m in away["models"] if m["roles"] == ["reward"])
    assert reward["model"] == "target" and reward["measured"] is True  # a judge that is not the target


def test_hardware_and_build_are_reported(catalog: Path, capsys) -> None:
    report = doctor_json(capsys)
    hw = report["hardware"]
    assert 1 <= hw["threads"] <= hw["usable_cpus"]
    assert hw["ram_total"] > 0 and hw["ram_available"] <= hw["ram_total"]
    llama = report["llama_cpp"]
    assert llama["available"] is True, llama["error"]
    assert "CPU" in llama["backends"] and any(d["kind"] == "CPU" for d in llama["devices"])
    if not llama["gpu_backends"]:
        assert any(system.rebuild_command("CUDA") in line for line in report["advice"])


def test_text_report(catalog: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SPECS_LOCAL_THREADS", "3")
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "llama-cpp-python 0.3.36" in out and "threads: 3 " in out and "RAM:" in out
    rows = {line.split()[0]: line.rstrip() for line in out.splitlines() if line.strip()}
    assert "~" not in rows["here"] and rows["here"].endswith("yes")  # measured, and tiny
    assert rows["away"].count("~") == 4  # weights, KV, logits and total estimated


def test_doctor_works_without_llama_cpp(catalog: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an uninstalled package looks like to import
    report = doctor_json(capsys)
    assert report["llama_cpp"]["available"] is False
    assert "pip install llama-cpp-python==0.3.36" in report["advice"][0]
    assert report["presets"]["here"]["estimated"] is False  # sizing needs only the gguf package
    assert main(["doctor"]) == 0
    assert "not available: llama-cpp-python cannot be imported" in capsys.readouterr().out


def test_rebuild_commands_are_exact() -> None:
    assert system.rebuild_command("CUDA") == (
        'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
    )
    assert system.rebuild_command("Metal").startswith('CMAKE_ARGS="-DGGML_METAL=on" pip install')


@pytest.mark.parametrize(("total", "fits"), [(90, "yes"), (95, "tight"), (100, "tight"), (101, "no")])
def test_verdict_against_the_budget(total: int, fits: str) -> None:
    assert doctor._verdict(total, doctor.Budget(100, "free RAM")) == fits


def test_nvidia_smi_rows_are_parsed() -> None:
    csv = "NVIDIA H200, 143771, 143257\nNVIDIA GeForce RTX 4090, 24564, [N/A]\n"
    [gpu] = system.parse_nvidia_smi(csv)
    assert (gpu.name, gpu.total, gpu.free) == ("NVIDIA H200", 143771 * 2**20, 143257 * 2**20)
