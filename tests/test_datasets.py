"""Datasets: JSON Lines parsing, bad rows, short names, selection, Hub files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import UserError
from app.eval import datasets
from app.eval.datasets import (
    HubDataset,
    choose_split_files,
    load_dataset,
    parse_hub_id,
    rows_to_dataset,
)


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "small.jsonl",
        [
            {"id": "a", "problem": "1+1?", "answer": "2"},
            {"id": "b", "problem": "2+2?"},  # line 2: no answer
            "",  # blank lines are not rows
            "{not json",  # line 4
            {"id": "c", "question": "3+3?", "answer": 6},  # other field name, numeric answer
            {"id": "d", "problem": "", "answer": "1"},  # line 6: empty problem
            ["a list"],  # line 7
            {"problem": "no id here", "answer": "x"},  # line 8: id from the line number
            {"id": "a", "problem": "again", "answer": "2"},  # line 9: duplicate id
        ],
    )


def test_bad_rows_are_reported_by_line_and_the_rest_load(small: Path) -> None:
    data = load_dataset(str(small))
    assert [(p.id, p.problem, p.answer) for p in data.problems] == [
        ("a", "1+1?", "2"),
        ("c", "3+3?", "6"),
        ("small-8", "no id here", "x"),
    ]
    assert data.skipped == [
        "line 2: no answer",
        "line 4: not JSON",
        "line 6: no problem",
        "line 7: not a JSON object",
        "line 9: duplicate id a",
    ]
    assert data.source == str(small)


def test_a_file_without_usable_rows_is_refused(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "no answer"}])
    with pytest.raises(UserError, match="no usable problems"):
        load_dataset(str(bad))


def test_missing_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not exist; check the path"):
        load_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="Unknown dataset 'nonsense'"):
        load_dataset("nonsense")


def test_selection_limit_offset_ids_shuffle(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "ten.jsonl", [{"id": f"p{i}", "problem": f"q{i}", "answer": str(i)} for i in range(10)]
    )

    def ids(**kw: object) -> list[str]:
        return [p.id for p in load_dataset(str(path), **kw).problems]

    assert ids(limit=3) == ["p0", "p1", "p2"]
    assert ids(offset=8) == ["p8", "p9"]
    assert ids(offset=2, limit=2) == ["p2", "p3"]
    assert ids(ids=["p7", "p1", "p7"]) == ["p7", "p1"]
    shuffled = ids(shuffle=True, seed=3)
    assert sorted(shuffled) == sorted(ids()) and shuffled != ids()
    assert ids(shuffle=True, seed=3) == shuffled  # the seed fixes the order
    assert ids(shuffle=True, seed=4) != shuffled
    with pytest.raises(UserError, match="no problem with id zz"):
        load_dataset(str(path), ids=["zz"])


def test_short_names_prefer_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "gsm8k.jsonl", [{"id": "mine", "problem": "q", "answer": "1"}])
    monkeypatch.setenv("SPECS_LOCAL_DATA_DIR", str(tmp_path))
    data = load_dataset("gsm8k")
    assert [p.id for p in data.problems] == ["mine"]
    assert data.name == "gsm8k"


@pytest.mark.skipif(
    not (datasets.REPO_ROOT.parent / "shared" / "data" / "gsm8k.jsonl").is_file(),
    reason="the shared data directory is not next to this checkout",
)
def test_bundled_short_names_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPECS_LOCAL_DATA_DIR", raising=False)
    expected = {"gsm8k": 1119, "math500": 500, "amc23": 40, "olympiadbench": 675, "aime24": 30}
    for name, rows in expected.items():
        data = load_dataset(name)
        assert len(data.problems) == rows and not data.skipped, name
    assert load_dataset("gsm8k", limit=1).problems[0].answer == "18"


def test_row_shapes_of_hub_sources() -> None:
    data = rows_to_dataset(
        [
            (1, {"question": "Janet...", "answer": "She makes 9 * 2 = 18.\n#### 1,018"}),  # GSM8K
            (2, {"id": 2766, "question": "Find n.", "final_answer": ["$2$", "$3$"]}),  # OlympiadBench
            (3, {"id": 0, "question": "Miles?", "answer": 27.0}),  # AMC23
            (4, {"unique_id": "test/x.json", "problem": "p", "answer": "\\frac12"}),  # MATH-500
        ],
        name="mixed",
        source="hub",
    )
    assert [(p.id, p.answer) for p in data.problems] == [
        ("mixed-1", "1018"),
        ("2766", "2, 3"),
        ("0", "27"),
        ("test/x.json", "\\frac12"),
    ]


def test_hub_ids_and_split_files() -> None:
    assert parse_hub_id("openai/gsm8k:main:test") == HubDataset("openai/gsm8k", "main", "test")
    assert parse_hub_id("HuggingFaceH4/MATH-500") == HubDataset("HuggingFaceH4/MATH-500", None, "test")
    # known benchmarks get the config and split their papers use; others default to test
    assert parse_hub_id("openai/gsm8k") == HubDataset("openai/gsm8k", "main", "test")
    assert parse_hub_id("Hothan/OlympiadBench") == HubDataset("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")
    assert parse_hub_id("someone/data:cfg") == HubDataset("someone/data", "cfg", "test")
    gsm8k = [
        "README.md",
        "main/test-00000-of-00001.parquet",
        "main/train-00000-of-00001.parquet",
        "socratic/test-00000-of-00001.parquet",
    ]
    assert choose_split_files(gsm8k, HubDataset("openai/gsm8k", "main", "test")) == ["main/test-00000-of-00001.parquet"]
    math500 = ["README.md", "test.jsonl", ".gitattributes"]
    assert choose_split_files(math500, HubDataset("HuggingFaceH4/MATH-500")) == ["test.jsonl"]
    both = ["data/test.jsonl", "data/test-00000-of-00001.parquet"]
    assert choose_split_files(both, HubDataset("x/y")) == ["data/test.jsonl"]
    with pytest.raises(UserError, match=r"has several configs \(main, socratic\); name one as owner/name:config"):
        choose_split_files(gsm8k, HubDataset("someone/gsm8k-copy"))
    with pytest.raises(UserError, match="no 'test' split; choose one of train"):
        choose_split_files(["data/train-00000-of-00001.parquet"], HubDataset("x/y"))


def test_hub_dataset_is_downloaded_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"question": ["2+2?", "3+3?"], "answer": ["so 4\n#### 4", "#### 6"]}), parquet)
    import huggingface_hub

    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(
        huggingface_hub,
        "list_repo_files",
        lambda repo, repo_type: ["main/test-00000-of-00001.parquet", "main/train-00000-of-00001.parquet"],
    )

    def download(repo: str, filename: str, repo_type: str) -> str:
        asked.append((repo, filename))
        return str(parquet)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    data = load_dataset("openai/gsm8k:main")
    assert asked == [("openai/gsm8k", "main/test-00000-of-00001.parquet")]
    assert [(p.problem, p.answer) for p in data.problems] == [("2+2?", "4"), ("3+3?", "6")]
    assert data.source == "openai/gsm8k:main:test"


def test_offline_hub_is_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    monkeypatch.setenv("SPECS_LOCAL_DATA_DIR", str(tmp_path))  # an empty data dir
    monkeypatch.setattr(datasets, "REPO_ROOT", tmp_path / "repo")  # no sibling shared/data either
    with pytest.raises(
        UserError,
        match=r"Cannot read Hothan/OlympiadBench from the Hugging Face Hub \(ConnectionError\); no local copy",
    ):
        load_dataset("olympiadbench")
