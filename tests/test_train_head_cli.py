"""train-head's options, the value-head reward in the catalog, and output paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.commands.common import check_output_file
from app.commands.train_head import parse_plans, parse_rows, select_rows
from app.config import BUILTIN_HEADS, Catalog, RewardSpec
from app.errors import UserError


def test_plans_parse_with_the_search_temperature() -> None:
    plans = parse_plans("draft@T*2, target@0.8*3", 0.3, has_draft=True)
    assert [(p.source, p.temperature, p.samples) for p in plans] == [("draft", 0.3, 2), ("target", 0.8, 3)]
    assert plans[0].key == "draft@0.3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("draft@T", "ROLE@TEMPERATURE"),
        ("judge@0.3*2", "ROLE@TEMPERATURE"),
        ("target@9*2", "temperature 0-5"),
        ("target@0.3*99", "1-16 samples"),
        (" , ", "empty"),
    ],
)
def test_bad_plans_are_one_sentence(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_plans(text, 0.3, has_draft=True)


def test_a_draft_plan_needs_a_draft() -> None:
    with pytest.raises(UserError, match="no draft"):
        parse_plans("draft@T*2", 0.3, has_draft=False)


def test_rows() -> None:
    assert parse_rows("200:") == [(200, None)]
    assert parse_rows(":50") == [(0, 50)]
    assert parse_rows(":") == [(0, None)]
    assert parse_rows("200:230, 250:") == [(200, 230), (250, None)]
    for bad in ("200", "a:b", "50:10", "200:230,", "1:2,5:3"):
        with pytest.raises(UserError, match="--rows"):
            parse_rows(bad)


def test_select_rows_takes_each_range_in_order_and_each_row_once() -> None:
    rows = [f"row{i}" for i in range(10)]
    assert select_rows(rows, [(2, 4), (7, None)]) == ["row2", "row3", "row7", "row8", "row9"]
    assert select_rows(rows, [(0, 3), (1, 4)]) == ["row0", "row1", "row2", "row3"]
    assert select_rows(rows, [(20, None)]) == []


def test_output_path_checks(tmp_path: Path) -> None:
    check_output_file(tmp_path / "new" / "deeper" / "head.safetensors", "--out", make_folder=True)  # folders get made
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(tmp_path, "--out", make_folder=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_file(blocker / "head.safetensors", "--out", make_folder=True)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="cannot be written"):
            check_output_file(locked / "h", "--out", make_folder=True)


def _catalog(reward: dict[str, str]) -> dict[str, object]:
    return {
        "default_preset": "p",
        "models": {"t": {"file": "t.gguf", "local": True}, "d": {"file": "d.gguf", "local": True}},
        "presets": {"p": {"draft": "d", "target": "t", "reward": reward}},
    }


def test_value_head_reward_in_the_catalog(tmp_path: Path) -> None:
    catalog = Catalog.model_validate(_catalog({"kind": "value-head", "model": "t", "head": str(tmp_path / "h")}))
    assert catalog.presets["p"].reward.head_path == tmp_path / "h"
    with pytest.raises(ValueError, match="must be the target"):
        Catalog.model_validate(_catalog({"kind": "value-head", "model": "d", "head": "h"}))
    with pytest.raises(ValueError, match="needs `head`"):
        Catalog.model_validate(_catalog({"kind": "value-head", "model": "t"}))
    with pytest.raises(ValueError, match="belongs to the value-head kind"):
        Catalog.model_validate(_catalog({"kind": "judge", "model": "t", "head": "h"}))


def test_relative_heads_are_looked_for_in_the_package() -> None:
    spec = RewardSpec(kind="value-head", model="t", head="surely-not-in-the-user-folder.safetensors")
    assert spec.head_path == BUILTIN_HEADS / "surely-not-in-the-user-folder.safetensors"


def test_plans_can_skip_problems() -> None:
    [plan] = parse_plans("target@0.8*2/3", 0.3, has_draft=False)
    assert plan.every == 3 and [i for i in range(7) if plan.applies(i)] == [0, 3, 6]
    with pytest.raises(UserError, match="every 1 or more"):
        parse_plans("target@0.8*2/0", 0.3, has_draft=False)


def test_an_override_replaces_a_reward_whole() -> None:
    from app.config import merge

    base = {"presets": {"p": {"target": "t", "reward": {"kind": "value-head", "model": "t", "head": "h"}}}}
    merged = merge(base, {"presets": {"p": {"reward": {"kind": "judge", "model": "t"}}}})
    assert merged["presets"]["p"] == {"target": "t", "reward": {"kind": "judge", "model": "t"}}
