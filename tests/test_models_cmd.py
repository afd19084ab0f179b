"""`specs-local models`: the table, --json and --paths."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from app.cli import main
from app.config import dump_toml


@pytest.fixture
def catalog(hub_env: Path, tiny_gguf: Callable[..., bytes]) -> Path:
    """A user catalog with one model on disk (by path), one in the models folder, one only on the Hub."""
    own = hub_env / "mine" / "own-Q8_0.gguf"
    own.parent.mkdir()
    own.write_bytes(tiny_gguf("qwen"))
    (hub_env / "models").mkdir()
    (hub_env / "models" / "dev-q4_k_m.gguf").write_bytes(tiny_gguf("qwen", seed=3))
    (hub_env / "user-models.toml").write_text(
        dump_toml(
            {
                "default_preset": "half",
                "models": {
                    "own": {"file": "own-Q8_0.gguf", "path": str(own)},
                    "dev": {"file": "dev-q4_k_m.gguf", "local": True},
                    "remote": {"repo": "org/remote-GGUF", "file": "remote-IQ4_XS.gguf", "size": 2_500_000_000},
                },
                "presets": {
                    "half": {"draft": "own", "target": "remote", "reward": {"kind": "judge", "model": "remote"}},
                    "local": {"draft": "dev", "target": "own", "reward": {"kind": "judge", "model": "own"}},
                },
            }
        )
    )
    return hub_env


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def test_json_says_what_is_present_where_and_how_big(catalog: Path, tiny_gguf: Callable[..., bytes], capsys) -> None:
    code, out = run(capsys, "models", "--json")
    assert code == 0
    listing = json.loads(out)
    own, dev, remote = (listing["models"][m] for m in ("own", "dev", "remote"))
    assert own == {
        **own,
        "present": True,
        "path": str(catalog / "mine" / "own-Q8_0.gguf"),
        "quantisation": "Q8_0",
        "size": len(tiny_gguf("qwen")),
        "presets": ["half", "local"],
    }
    assert dev["present"] and dev["path"] == str(catalog / "models" / "dev-q4_k_m.gguf") and dev["local"]
    assert remote == {**remote, "present": False, "path": None, "size": 2_500_000_000, "quantisation": "IQ4_XS"}
    assert listing["default_preset"] == "half"
    assert listing["presets"]["half"]["roles"] == {"draft": "own", "target": "remote", "reward": "remote"}
    assert listing["presets"]["half"]["ready"] is False
    assert listing["presets"]["local"]["ready"] is True
    assert "paper" in listing["presets"]  # the built-in presets are listed too


def test_table_shows_roles_paths_and_how_to_get_what_is_missing(catalog: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    code, out = run(capsys, "models")
    assert code == 0
    assert "half *" in out  # the default preset
    assert re.search(r"local\s+draft\s+dev\b", out) and re.search(r"reward\s+own\b", out) and "(judge)" in out
    assert str(catalog / "mine" / "own-Q8_0.gguf") in out
    assert "missing: run `specs-local download half`" in out
    assert "~2.50 GB" in out and "IQ4_XS" in out


def test_paths_shows_the_user_catalog_models_folder_and_cache(catalog: Path, capsys) -> None:
    code, out = run(capsys, "models", "--paths", "--json")
    assert code == 0
    assert json.loads(out) == {
        "user_config": str(catalog / "user-models.toml"),
        "user_config_exists": True,
        "models_dir": str(catalog / "models"),
        "hf_cache": str(catalog / "hf" / "hub"),
    }
    code, out = run(capsys, "models", "--paths")
    assert code == 0 and f"user catalog:       {catalog / 'user-models.toml'}\n" in out


def test_a_broken_user_catalog_is_one_sentence(hub_env: Path, capsys) -> None:
    (hub_env / "user-models.toml").write_text("[models.x\n")
    code = main(["models"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "not valid TOML" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[: len(data) - 1000], r"is cut short \([\d,]+ of the [\d,]+ bytes its header describes\)"),
        (lambda data: data[:2000], r"is cut short inside its header \(2,000 bytes\)"),
        (lambda data: b"<html>Sign in</html>", r"is not a GGUF file"),
    ],
    ids=["cut-in-the-tensors", "cut-in-the-header", "not-gguf"],
)
def test_a_damaged_file_is_listed_as_damaged_and_its_preset_not_ready(
    catalog: Path, capsys, monkeypatch, damage: Callable[[bytes], bytes], problem: str
) -> None:
    # A file nothing has verified yet (put there by hand, or cut off by a full disk)
    # is read each time `models` lists it; a preset that needs it is not ready.
    dev = catalog / "models" / "dev-q4_k_m.gguf"
    dev.write_bytes(damage(dev.read_bytes()))
    code, out = run(capsys, "models", "--json")
    listing = json.loads(out)
    assert code == 0
    assert re.fullmatch(problem, listing["models"]["dev"]["problem"])
    assert listing["models"]["own"]["problem"] is None
    assert listing["presets"]["local"]["ready"] is False  # needs dev
    monkeypatch.setenv("COLUMNS", "200")
    code, out = run(capsys, "models")
    flat = " ".join(out.split())  # the cell wraps at spaces
    assert re.search(
        r"damaged: \S+dev-q4_k_m\.gguf " + problem + "; fetch it again with `scripts/fetch-dev-models.sh`", flat
    )
    dev.write_bytes(b"")
    assert json.loads(run(capsys, "models", "--json")[1])["models"]["dev"]["problem"] == "is not a GGUF file"
