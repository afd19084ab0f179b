"""A preset resolved once into roles, model entries and files; runtime opens engines from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app import presets
from app.config import ModelEntry, dump_toml, load_catalog
from app.errors import UserError
from app.presets import ResolvedPreset, resolve_preset
from app.runtime import open_engines
from app.search.settings import SearchSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def catalog_file(hub_env: Path, tiny_qwen: Path) -> Path:
    """Presets over one tiny file on disk (`here`) and one model only on the Hub (`away`)."""
    (hub_env / "user-models.toml").write_text(
        dump_toml(
            {
                "models": {
                    "here": {"file": tiny_qwen.name, "path": str(tiny_qwen), "context": 512},
                    "also-here": {"file": tiny_qwen.name, "path": str(tiny_qwen), "context": 256},
                    "away": {"repo": "org/away-GGUF", "file": "away-Q4_K_M.gguf"},
                },
                "presets": {
                    "judge-on-target": {
                        "draft": "here",
                        "target": "here",
                        "reward": {"kind": "judge", "model": "here"},
                    },
                    "own-judge": {"draft": "here", "target": "away", "reward": {"kind": "judge", "model": "also-here"}},
                    "solo": {"target": "here", "reward": {"kind": "judge", "model": "here"}},
                },
            }
        )
    )
    return hub_env / "user-models.toml"


def resolved(name: str) -> ResolvedPreset:
    return resolve_preset(load_catalog(), name)


def test_roles_name_their_entries_and_files_in_role_order(catalog_file: Path, tiny_qwen: Path) -> None:
    preset = resolved("own-judge")
    assert list(preset.roles) == ["draft", "target", "reward"]
    assert {role: m.entry.name for role, m in preset.roles.items()} == preset.preset.roles()
    assert preset.draft is not None and preset.draft.path == tiny_qwen and preset.draft.present
    assert preset.target.path is None and not preset.target.present
    assert [m.name for m in preset.missing] == ["away"] and not preset.ready
    assert resolved("solo").draft is None


def test_a_model_named_by_several_roles_is_looked_for_once(catalog_file: Path, monkeypatch) -> None:
    looked_for: list[str] = []
    find = presets.find_model

    def counting(entry: ModelEntry) -> Path | None:
        looked_for.append(entry.name)
        return find(entry)

    monkeypatch.setattr(presets, "find_model", counting)
    preset = resolved("judge-on-target")
    assert looked_for == ["here"]
    assert [m.role for m in preset.models] == ["draft"]  # each model once, at its first role
    assert preset.ready


def test_instances_say_which_roles_share_a_loaded_model(catalog_file: Path) -> None:
    # A judge on the target shares the target's context; the draft always has its own.
    assert [(i.entry.name, i.roles) for i in resolved("judge-on-target").instances()] == [
        ("here", ("target", "reward")),
        ("here", ("draft",)),
    ]
    assert [(i.entry.name, i.roles) for i in resolved("own-judge").instances()] == [
        ("away", ("target",)),
        ("here", ("draft",)),
        ("also-here", ("reward",)),
    ]
    assert [i.roles for i in resolved("solo").instances()] == [("target", "reward")]


def test_with_files_places_the_named_models_and_keeps_the_rest(catalog_file: Path, tmp_path: Path) -> None:
    preset = resolved("own-judge")
    fetched = tmp_path / "away-Q4_K_M.gguf"
    ready = preset.with_files({"away": fetched})
    assert ready.target.path == fetched and ready.ready
    assert ready.draft == preset.draft and ready.reward == preset.reward
    assert not preset.ready  # the resolved preset itself is unchanged


def test_runtime_opens_each_instance_once_from_the_resolved_preset(catalog_file: Path) -> None:
    with open_engines(resolved("judge-on-target"), SearchSettings(n=2), threads=1) as engines:
        assert engines.draft is not None and engines.draft is not engines.target
        assert (engines.target.name, engines.draft.name) == ("here", "here")
        assert engines.target.n_ctx == 512


def test_runtime_refuses_a_preset_whose_files_are_not_here(catalog_file: Path) -> None:
    with (
        pytest.raises(UserError, match="run `specs-local download own-judge`"),
        open_engines(resolved("own-judge"), SearchSettings(), threads=1),
    ):
        pass


def test_finding_transferring_and_running_leave_the_questions_to_the_command_line() -> None:
    """app.hub, app.transfer, app.presets and app.runtime never import click:
    consent prompts and where messages go belong to app/commands."""
    code = "import sys\nimport app.hub, app.transfer, app.presets, app.runtime\nprint('click' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
