"""Every path a command will write is checked before any model loads: one sentence, exit 2."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from app.cli import main
from app.commands import common
from app.errors import UserError


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Opening engines fails the test: every refusal here must come first."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(common, "open_engines", refuse)
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "user-models.toml"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no Hub is reached
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"id": "p0", "problem": "What is 12 + 30?", "answer": "42"}) + "\n")
    return path


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder\n")
    return path


def one_sentence(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_a_trace_in_a_folder_that_does_not_exist(capsys, tmp_path: Path) -> None:
    trace = tmp_path / "a" / "folder" / "that" / "does" / "not" / "exist" / "t.jsonl"
    line = one_sentence(capsys, ["solve", "What is 12 + 30?", "--trace", str(trace)])
    assert f"--trace {trace}: the folder {trace.parent} does not exist" in line
    assert not (tmp_path / "a").exists()


def refused_by_click(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Paths of the wrong kind are refused by click's own check, as a usage error."""
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_trace_that_is_a_folder(capsys, tmp_path: Path) -> None:
    line = refused_by_click(capsys, ["solve", "What is 12 + 30?", "--trace", str(tmp_path)])
    assert f"Invalid value for '--trace': File '{tmp_path}' is a directory." in line
    assert "is a folder" in common_refusal(tmp_path)


def test_a_trace_under_a_file(capsys, a_file: Path) -> None:
    trace = a_file / "t.jsonl"
    line = one_sentence(capsys, ["solve", "What is 12 + 30?", "--trace", str(trace)])
    assert f"--trace {trace}: {a_file} is a file, not a folder" in line


def common_refusal(path: Path) -> str:
    with pytest.raises(UserError) as refused:
        common.check_output_file(path, "--trace")
    return str(refused.value)


def test_bench_out_that_is_a_file(capsys, dataset: Path, a_file: Path) -> None:
    args = ["bench", "--dataset", str(dataset), "--methods", "greedy", "--out", str(a_file)]
    assert f"'{a_file}' is a file." in refused_by_click(capsys, args)
    with pytest.raises(UserError, match="is a file, not a folder"):
        common.check_output_dir(a_file, "--out")


def test_bench_out_below_a_file(capsys, dataset: Path, a_file: Path) -> None:
    out = a_file / "run" / "one"
    args = ["bench", "--dataset", str(dataset), "--methods", "greedy", "--out", str(out)]
    assert f"--out {out}: {a_file} is a file, not a folder" in one_sentence(capsys, args)


def test_bench_trace_dir_below_a_file(capsys, dataset: Path, a_file: Path, tmp_path: Path) -> None:
    args = ["bench", "--dataset", str(dataset), "--out", str(tmp_path / "o"), "--trace-dir", str(a_file / "t")]
    assert f"--trace-dir {a_file / 't'}: {a_file} is a file" in one_sentence(capsys, args)
    assert not (tmp_path / "o").exists()


def test_calibrate_out_that_is_a_file(capsys, dataset: Path, a_file: Path) -> None:
    args = ["calibrate", "--dataset", str(dataset), "--limit", "1", "--yes", "--out", str(a_file)]
    assert f"'{a_file}' is a file." in refused_by_click(capsys, args)


def test_calibrate_checks_where_it_saves_the_choice_before_the_sweep(
    capsys, dataset: Path, a_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_file = a_file / "specs-local" / "models.toml"
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(user_file))
    args = ["calibrate", "--dataset", str(dataset), "--limit", "1", "--yes", "--out", str(tmp_path / "sweep")]
    assert f"The user catalog {user_file}: {a_file} is a file, not a folder" in one_sentence(capsys, args)


def test_calibrate_dry_run_writes_no_catalog_so_does_not_check_it(
    capsys, dataset: Path, a_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(a_file / "models.toml"))
    args = ["calibrate", "--dataset", str(dataset), "--limit", "1", "--dry-run", "--out", str(tmp_path / "sweep")]
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(args)  # went past the checks to the sweep


def test_download_local_dir_that_is_a_file(capsys, a_file: Path) -> None:
    line = refused_by_click(capsys, ["download", "qwen2.5-math-1.5b-instruct", "--local-dir", str(a_file)])
    assert f"'{a_file}' is a file." in line


def test_a_download_that_will_be_recorded_checks_the_user_catalog_first(
    capsys, a_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(a_file / "models.toml"))
    args = ["download", "qwen2.5-math-1.5b-instruct", "--local-dir", str(tmp_path / "models")]
    assert f"The user catalog {a_file / 'models.toml'}: {a_file} is a file" in one_sentence(capsys, args)


def test_a_folder_that_takes_no_new_file_is_named_with_the_reason(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(common.tempfile, "TemporaryFile", read_only)
    trace = tmp_path / "t.jsonl"
    line = one_sentence(capsys, ["solve", "What is 12 + 30?", "--trace", str(trace)])
    assert f"--trace {trace} cannot be written (Read-only file system in {tmp_path})" in line


def test_checks_pass_and_create_nothing(tmp_path: Path) -> None:
    new = tmp_path / "not" / "yet"
    assert common.check_output_dir(new, "--out") == new
    assert common.check_output_file(new / "t.jsonl", "--x", make_folder=True) == new / "t.jsonl"
    assert common.check_output_file(tmp_path / "t.jsonl", "--trace") == tmp_path / "t.jsonl"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="does not exist"):
        common.check_output_file(new / "t.jsonl", "--trace")


def test_a_broken_link_on_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"gone is a broken link"):
        common.check_output_dir(tmp_path / "gone" / "out", "--out")
