"""The value heads that ship with the package: each built-in preset that names
one finds it among the packaged heads, it was made for that preset's target
file, it never saw the measuring rows, and the README's example answers 42
with the default preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.commands.train_head import parse_rows
from app.config import BUILTIN_HEADS, load_catalog
from engines.value_head import check_head_fits, load_head

# GSM8K rows 0-199 are where results are measured; no head may train on them.
FIRST_TRAINING_ROW = 200
QWEN_1_5B_HIDDEN = 1536


@pytest.fixture(autouse=True)
def builtin_catalog_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's own models.toml or heads must not change what these tests see."""
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "no-user-config.toml"))


def value_head_presets() -> list[str]:
    catalog = load_catalog()
    return sorted(name for name, preset in catalog.presets.items() if preset.reward.kind == "value-head")


def test_the_default_preset_reads_a_shipped_head() -> None:
    catalog = load_catalog()
    assert catalog.preset(catalog.default_preset).reward.kind == "value-head"


@pytest.mark.parametrize("name", value_head_presets())
def test_a_shipped_head_fits_its_presets_target(name: str) -> None:
    catalog = load_catalog()
    preset = catalog.preset(name)
    path = preset.reward.head_path
    assert path is not None and path.parent == BUILTIN_HEADS, f"{name}'s head is not packaged: {path}"
    head = load_head(path)
    target = catalog.model(preset.target)
    assert preset.reward.model == preset.target  # a head reads the target's own states
    assert target.sha256 and head.model_sha256  # so the runtime's check below compares them
    # The check the runtime makes when it opens the preset (HeadFileError on a mismatch).
    check_head_fits(head, path, model_name=target.name, hidden_size=QWEN_1_5B_HIDDEN, model_sha256=target.sha256)
    assert head.info["target_file"] == target.file
    if head.layer is not None:
        assert 0 <= head.layer < 28  # the 1.5B's layers


@pytest.mark.parametrize("name", value_head_presets())
def test_a_shipped_head_never_trained_on_the_measuring_rows(name: str) -> None:
    head = load_head(load_catalog().preset(name).reward.head_path)  # type: ignore[arg-type]
    assert Path(str(head.info["dataset"])).stem == "gsm8k"
    ranges = parse_rows(str(head.info["rows"]))
    assert ranges and all(start >= FIRST_TRAINING_ROW for start, _end in ranges), head.info["rows"]
    held_out = head.info["held_out_auc"]["value head"]
    assert held_out["auc"] >= 0.75 and held_out["steps"] >= 200


@pytest.mark.real
def test_the_readme_example_answers_42_with_the_default_preset(
    dev_model_small: Path, dev_model_large: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`specs-local solve "What is 12 + 30?"` as the README gives it: the default
    preset, its shipped head and settings, both development models."""
    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(dev_model_large.parent))
    assert main(["solve", "What is 12 + 30?", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"] == "42", result["solution"]
    models = result["stats"]["models"]
    assert models["draft"]["generated"] > 0 and models["target"]["generated"] > 0
    # The head reads the target's own states: no reward-model call at all.
    assert models["reward"]["generated"] == 0 and models["reward"]["prefilled"] == 0
