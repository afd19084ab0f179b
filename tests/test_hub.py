"""`specs-local download`, app.hub and app.transfer against a loopback fake Hub, with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
from huggingface_hub import file_download, try_to_load_from_cache
from huggingface_hub.utils.tqdm import tqdm as HfTqdm  # the bar http_get uses by default

from app import hub, transfer
from app.cli import main
from app.commands.common import Consent, ensure_files
from app.config import dump_toml, load_catalog
from app.errors import UserError
from app.presets import ResolvedPreset, resolve_preset
from engines.base import VocabularyMismatch

if TYPE_CHECKING:
    from fakehub import FakeHub


DRAFT_REPO, TARGET_REPO = "test-org/tiny-draft-GGUF", "test-org/tiny-target-GGUF"
LLAMA_REPO = "test-org/tiny-llama-GGUF"
DRAFT_FILE, TARGET_FILE, LLAMA_FILE = "tiny-draft-Q8_0.gguf", "tiny-target-Q4_K_M.gguf", "tiny-llama-F16.gguf"
CHUNK = 64 * 1024  # the chunk size hub_env sets
ROOT = Path(__file__).resolve().parents[1]

Tiny = namedtuple("Tiny", "hub draft target llama user_file")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(fake_hub: FakeHub, hub_env: Path, tiny_gguf: Callable[..., bytes]) -> Tiny:
    """Three tiny models on the fake Hub and a user catalog with presets over them."""
    draft, target, llama = tiny_gguf("qwen", seed=1), tiny_gguf("qwen", seed=2), tiny_gguf("llama")
    fake_hub.add_repo(DRAFT_REPO, {DRAFT_FILE: draft, "README.md": b"# tiny draft\n"})
    fake_hub.add_repo(TARGET_REPO, {TARGET_FILE: target, "tiny-target-Q8_0.gguf": target})
    fake_hub.add_repo(LLAMA_REPO, {LLAMA_FILE: llama})
    user_file = hub_env / "user-models.toml"
    catalog = {
        "models": {
            "tiny-draft": {"repo": DRAFT_REPO, "file": DRAFT_FILE, "sha256": sha(draft), "size": len(draft)},
            "tiny-target": {"repo": TARGET_REPO, "file": TARGET_FILE, "sha256": sha(target), "size": len(target)},
            "tiny-llama": {"repo": LLAMA_REPO, "file": LLAMA_FILE, "size": len(llama)},
        },
        "presets": {
            "tiny": {
                "draft": "tiny-draft",
                "target": "tiny-target",
                "reward": {"kind": "judge", "model": "tiny-target"},
            },
            "mixed": {
                "draft": "tiny-draft",
                "target": "tiny-llama",
                "reward": {"kind": "judge", "model": "tiny-llama"},
            },
        },
    }
    user_file.write_text(dump_toml(catalog))
    return Tiny(fake_hub, draft, target, llama, user_file)


def cached(repo: str, file: str, revision: str = "main") -> Path | None:
    found = try_to_load_from_cache(repo, file, cache_dir=hub.hub_cache_dir(), revision=revision)
    return Path(found) if isinstance(found, str) else None


def partials() -> list[Path]:
    return sorted(hub.hub_cache_dir().rglob("*.incomplete"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- downloads that succeed ---------------------------------------------------------


def test_fresh_download_of_a_preset_fills_the_cache_and_checks_the_vocabulary(tiny: Tiny, capsys) -> None:
    code, out, err = run(capsys, "download", "tiny")
    assert code == 0, err
    assert cached(DRAFT_REPO, DRAFT_FILE).read_bytes() == tiny.draft
    assert cached(TARGET_REPO, TARGET_FILE).read_bytes() == tiny.target
    assert "tiny: ready" in out
    assert f"tiny-draft: {cached(DRAFT_REPO, DRAFT_FILE)}" in out
    assert partials() == []
    assert resolve_preset(load_catalog(), "tiny").missing == []


def test_a_second_download_finds_everything_in_place(tiny: Tiny, capsys) -> None:
    assert run(capsys, "download", "tiny")[0] == 0
    tiny.hub.requests.clear()
    code, out, _ = run(capsys, "download", "tiny")
    assert code == 0
    assert tiny.hub.requests == []  # present models are verified on disk, not fetched
    assert "tiny: ready" in out


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """http_get waits a second before each retry; tests retry at once."""
    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda seconds: None))


def test_a_connection_cut_mid_file_is_resumed_with_a_range_request(tiny: Tiny, no_retry_wait: None) -> None:
    tiny.hub.cut_next(150_000)
    remote = transfer.remote_file(DRAFT_REPO, DRAFT_FILE)
    path = transfer.fetch(remote, sha256=sha(tiny.draft), echo=lambda _: None)
    gets = tiny.hub.content_requests()
    assert [r.range for r in gets] == [None, f"bytes={2 * CHUNK}-"]  # the two whole chunks before the cut were kept
    assert path.read_bytes() == tiny.draft
    assert partials() == []


def test_a_download_cut_off_for_good_keeps_its_bytes_and_says_to_rerun(tiny: Tiny, no_retry_wait: None, capsys) -> None:
    tiny.hub.cut_next(CHUNK + 100)
    for _ in range(6):  # http_get gives up after five retries that bring no byte
        tiny.hub.cut_next(0)
    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 2
    line = one_error_line(err)
    assert f"stopped at {hub.format_size(CHUNK)}" in line and "run the same command again to resume" in line
    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 0, err
    assert tiny.hub.content_requests()[-1].range == f"bytes={CHUNK}-"
    assert cached(DRAFT_REPO, DRAFT_FILE).read_bytes() == tiny.draft


class _InterruptAfterTwoChunks(HfTqdm):
    def update(self, n: float | None = 1) -> bool | None:
        self.chunks = getattr(self, "chunks", 0) + 1
        if self.chunks > 2:
            raise KeyboardInterrupt
        return super().update(n)


def test_ctrl_c_keeps_the_partial_file_and_the_next_fetch_resumes_from_it(tiny: Tiny) -> None:
    remote = transfer.remote_file(DRAFT_REPO, DRAFT_FILE)
    notes: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        transfer.fetch(remote, sha256=sha(tiny.draft), tqdm_class=_InterruptAfterTwoChunks, echo=notes.append)
    [partial] = partials()
    assert partial.read_bytes() == tiny.draft[: 2 * CHUNK]
    assert "run the same command again to resume" in notes[-1]

    path = transfer.fetch(remote, sha256=sha(tiny.draft), echo=notes.append)
    assert tiny.hub.content_requests()[-1].range == f"bytes={2 * CHUNK}-"
    assert path.read_bytes() == tiny.draft
    assert partials() == []


def test_a_server_that_ignores_the_range_gets_a_clean_restart(tiny: Tiny) -> None:
    remote = transfer.remote_file(DRAFT_REPO, DRAFT_FILE)
    with pytest.raises(KeyboardInterrupt):
        transfer.fetch(remote, tqdm_class=_InterruptAfterTwoChunks, echo=lambda _: None)
    tiny.hub.ignore_ranges = True
    path = transfer.fetch(remote, sha256=sha(tiny.draft), echo=lambda _: None)
    assert tiny.hub.content_requests()[-1].range == f"bytes={2 * CHUNK}-"  # asked, answered with 200
    assert path.read_bytes() == tiny.draft  # the kept prefix was not doubled


def test_a_disk_that_fills_up_keeps_the_bytes_written_and_the_rerun_resumes(tiny: Tiny, capsys, monkeypatch) -> None:
    from faults import FullDisk

    disk = FullDisk(free=150_000)  # two chunks and part of a third
    with monkeypatch.context() as patch:
        patch.setattr(transfer, "open", disk.open, raising=False)
        code, out, err = run(capsys, "download", "tiny-draft")
    assert code == 2 and out == ""
    [partial] = partials()
    assert one_error_line(err) == (
        f"error: The download of {DRAFT_FILE} stopped at 150 kB of {hub.format_size(len(tiny.draft))}"
        f" (No space left on device); free some space in {partial.parent}, then run the same command again"
        " to resume it."
    )
    assert partial.read_bytes() == tiny.draft[:150_000]  # a prefix, nothing torn or doubled
    assert cached(DRAFT_REPO, DRAFT_FILE) is None

    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 0, err
    assert tiny.hub.content_requests()[-1].range == "bytes=150000-"
    assert cached(DRAFT_REPO, DRAFT_FILE).read_bytes() == tiny.draft
    assert partials() == []


def test_ctrl_c_in_the_cli_exits_130_and_the_rerun_resumes(tiny: Tiny, capsys, monkeypatch) -> None:
    calls = []

    def interrupting_update(self, n=1):
        calls.append(n)
        if len(calls) > 3:
            raise KeyboardInterrupt  # what Ctrl-C does during the fourth chunk

    with monkeypatch.context() as patch:
        patch.setattr(HfTqdm, "update", interrupting_update)
        code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 130
    assert "kept" in err and "resume" in err
    assert [p.stat().st_size for p in partials()] == [3 * CHUNK]

    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 0, err
    assert tiny.hub.content_requests()[-1].range == f"bytes={3 * CHUNK}-"
    assert cached(DRAFT_REPO, DRAFT_FILE).read_bytes() == tiny.draft


def test_two_downloads_of_the_same_file_at_once_end_with_one_intact_file(tiny: Tiny) -> None:
    tiny.hub.seconds_per_piece = 0.5  # seven pieces: 3.5 s for the whole file
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [sys.executable, "-m", "app.cli", "download", "tiny-draft"]
    both = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in both]
    # each asks for the file's metadata (then once more to link it into the cache)
    heads = sorted(r.at for r in tiny.hub.requests if r.server == "hub" and r.method == "HEAD")
    [download] = tiny.hub.content_requests()
    assert len(heads) == 4 and heads[1] < download.at + 3.0  # both asked while the file was on its way
    path = cached(DRAFT_REPO, DRAFT_FILE)
    for process, (out, err) in zip(both, outputs):
        assert process.returncode == 0, err
        assert out.strip() == f"tiny-draft: {path}"
    assert path.read_bytes() == tiny.draft
    # the second waited for the first's lock and found the file done (one download, not two)
    assert partials() == []
    assert [p.name for p in path.resolve().parent.iterdir()] == [sha(tiny.draft)]


def test_dry_run_lists_sizes_and_what_is_cached_without_downloading(tiny: Tiny, capsys) -> None:
    assert run(capsys, "download", "tiny-target")[0] == 0
    tiny.hub.requests.clear()
    code, out, _ = run(capsys, "download", "tiny", "--dry-run")
    assert code == 0
    assert f"tiny-target: present, {hub.format_size(len(tiny.target))}" in out
    assert f"tiny-draft: to download, {hub.format_size(len(tiny.draft))}" in out
    assert f"to download: {hub.format_size(len(tiny.draft))}" in out
    assert tiny.hub.content_requests() == []


def test_any_repo_file_by_glob_is_downloaded_and_registered(tiny: Tiny, capsys) -> None:
    code, _, err = run(capsys, "download", LLAMA_REPO, "--file", "*F16.gguf", "--name", "my-llama")
    assert code == 0, err
    entry = load_catalog().model("my-llama")
    assert (entry.repo, entry.file, entry.sha256) == (LLAMA_REPO, LLAMA_FILE, sha(tiny.llama))
    assert entry.revision == tiny.hub.repos[LLAMA_REPO].commit  # pinned to what was downloaded
    assert entry.context == 512  # the tiny model's training context, below the default 4096
    assert hub.find_model(entry).read_bytes() == tiny.llama


def test_local_dir_download_is_recorded_as_the_model_path(tiny: Tiny, tmp_path: Path, capsys) -> None:
    target_dir = tmp_path / "my-models"
    code, _, err = run(capsys, "download", "tiny-draft", "--local-dir", str(target_dir))
    assert code == 0, err
    assert (target_dir / DRAFT_FILE).read_bytes() == tiny.draft
    assert cached(DRAFT_REPO, DRAFT_FILE) is None  # the HF cache was not used
    assert hub.find_model(load_catalog().model("tiny-draft")) == target_dir / DRAFT_FILE


def test_revision_pins_the_commit_in_the_user_catalog(tiny: Tiny, capsys) -> None:
    commit = tiny.hub.repos[DRAFT_REPO].commit
    code, _, err = run(capsys, "download", "tiny-draft", "--revision", commit)
    assert code == 0, err
    entry = load_catalog().model("tiny-draft")
    assert entry.revision == commit
    assert hub.find_model(entry) == cached(DRAFT_REPO, DRAFT_FILE, revision=commit)


# -- failures: one sentence, exit 2, nothing half-usable left behind -----------------


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_bytes_damaged_in_transit_are_deleted_and_reported(tiny: Tiny, capsys) -> None:
    tiny.hub.corrupt(DRAFT_REPO, DRAFT_FILE)
    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 2
    line = one_error_line(err)
    assert "sha256" in line and "deleted" in line
    assert cached(DRAFT_REPO, DRAFT_FILE) is None
    assert not list(hub.hub_cache_dir().rglob("blobs/*"))


def test_a_hub_file_other_than_the_pinned_one_is_refused_before_downloading(tiny: Tiny, capsys) -> None:
    catalog = load_catalog()
    text = tiny.user_file.read_text().replace(catalog.model("tiny-draft").sha256, "0" * 64)
    tiny.user_file.write_text(text)
    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 2
    assert "not the file models.toml pins" in one_error_line(err)
    assert tiny.hub.content_requests() == []


def test_a_cached_file_that_fails_its_pin_is_taken_out_of_use(tiny: Tiny, capsys) -> None:
    assert run(capsys, "download", "tiny-draft")[0] == 0
    path = cached(DRAFT_REPO, DRAFT_FILE)
    blob = path.resolve()
    blob.write_bytes(tiny.draft[:-1] + b"\0")  # changed on disk after the download
    entry = load_catalog().model("tiny-draft")
    with pytest.raises(hub.ModelFileRejected, match=r"cache entry was deleted.*update `sha256` for tiny-draft"):
        hub.verify_local(entry, path, echo=lambda _: None)
    assert hub.find_model(entry) is None  # solve will not pick it up


def test_download_replaces_a_damaged_cached_file(tiny: Tiny, capsys) -> None:
    assert run(capsys, "download", "tiny-draft")[0] == 0
    cached(DRAFT_REPO, DRAFT_FILE).resolve().write_bytes(b"GGUF" + bytes(100))
    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 0, err
    assert "cache entry was deleted" in err and "Downloading it again" in err
    assert cached(DRAFT_REPO, DRAFT_FILE).read_bytes() == tiny.draft


def test_fetch_replaces_a_damaged_blob(tiny: Tiny) -> None:
    remote = transfer.remote_file(DRAFT_REPO, DRAFT_FILE)
    path = transfer.fetch(remote, echo=lambda _: None)
    path.resolve().write_bytes(tiny.draft[::-1])
    notes: list[str] = []
    assert transfer.fetch(remote, echo=notes.append).read_bytes() == tiny.draft
    assert any("is not a GGUF file; downloading it again" in note for note in notes)
    assert len(tiny.hub.content_requests()) == 2


def test_a_file_the_hub_serves_with_a_damaged_header_is_never_reported_ready(tiny: Tiny, capsys) -> None:
    damaged = tiny.draft[:2000]  # the magic, then a header cut short; its sha256 is the Hub's own
    tiny.hub.add_repo("test-org/damaged-GGUF", {"damaged-Q4_K_M.gguf": damaged})
    for _ in range(2):  # asked again, the answer is the same
        code, out, err = run(capsys, "download", "test-org/damaged-GGUF", "--file", "damaged-Q4_K_M.gguf")
        assert code == 2 and out == ""
        line = one_error_line(err)
        assert "damaged-Q4_K_M.gguf is cut short inside its header (2,000 bytes), so it was deleted" in line
        assert "test-org/damaged-GGUF serves it damaged, so choose another of its GGUF files with --file" in line
        assert cached("test-org/damaged-GGUF", "damaged-Q4_K_M.gguf") is None
    assert "damaged-q4_k_m" not in load_catalog().models  # never registered


@pytest.mark.parametrize(
    ("cut", "says"),
    [
        (lambda data: data[:3000], "is cut short inside its header (3,000 bytes)"),
        (lambda data: data[:-4096], "is cut short ("),  # the last tensor's bytes are missing
    ],
    ids=["in-the-header", "in-the-tensors"],
)
def test_a_cut_cached_file_is_downloaded_again(tiny: Tiny, capsys, cut: Callable[[bytes], bytes], says: str) -> None:
    assert run(capsys, "download", "tiny-llama")[0] == 0  # tiny-llama pins no sha256
    blob = cached(LLAMA_REPO, LLAMA_FILE).resolve()
    blob.write_bytes(cut(tiny.llama))  # as a crash or a full disk under an older copy would leave it
    code, out, err = run(capsys, "download", "tiny-llama")
    assert code == 0, err
    assert f"{says}" in err and "its cache entry was deleted" in err and "Downloading it again" in err
    assert "update `sha256`" not in err  # a damaged header is no matter of which file is wanted
    assert cached(LLAMA_REPO, LLAMA_FILE).read_bytes() == tiny.llama
    assert f"tiny-llama: {cached(LLAMA_REPO, LLAMA_FILE)}" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "Name a preset"),
        (("tiny", "--revision", "abc"), "--revision applies to one model"),
        (("tiny-draft", "--name", "x"), "--name goes with a REPO_ID"),
        ((DRAFT_REPO,), "Name the GGUF file"),
        (("tiny", "--file", "x.gguf"), "--file goes with exactly one REPO_ID"),
        (("no-such-thing",), "neither a preset"),
    ],
)
def test_arguments_that_do_not_fit_exit_2(tiny: Tiny, capsys, args: tuple[str, ...], says: str) -> None:
    code, _, err = run(capsys, "download", *args)
    assert code == 2
    assert says in err and "Traceback" not in err
    assert tiny.hub.requests == []


def test_unknown_repo_is_one_sentence(fake_hub: FakeHub, capsys) -> None:
    code, _, err = run(capsys, "download", "nobody/nothing-GGUF", "--file", "x.gguf")
    assert code == 2
    assert "has no repository nobody/nothing-GGUF" in one_error_line(err)


def test_a_malformed_repo_id_is_one_sentence(fake_hub: FakeHub, capsys) -> None:
    for pattern in ("m.gguf", "*.gguf"):  # a HEAD request, or a listing first
        code, _, err = run(capsys, "download", "not a/repo id", "--file", pattern)
        assert code == 2
        assert "is not a Hub repository id" in one_error_line(err)


def test_gated_repo_names_hf_token(fake_hub: FakeHub, tiny_gguf: Callable[..., bytes], capsys) -> None:
    fake_hub.add_repo("meta/gated-GGUF", {"m.gguf": tiny_gguf("qwen")}, gated=True)
    code, _, err = run(capsys, "download", "meta/gated-GGUF", "--file", "m.gguf")
    assert code == 2
    line = one_error_line(err)
    assert "gated" in line and "HF_TOKEN" in line


def test_missing_file_lists_the_repo_ggufs(tiny: Tiny, capsys) -> None:
    code, _, err = run(capsys, "download", TARGET_REPO, "--file", "tiny-target-Q2_K.gguf")
    assert code == 2
    assert "its GGUF files are: tiny-target-Q4_K_M.gguf, tiny-target-Q8_0.gguf" in one_error_line(err)


def test_an_ambiguous_glob_lists_the_matches(tiny: Tiny, capsys) -> None:
    code, _, err = run(capsys, "download", TARGET_REPO, "--file", "*.gguf")
    assert code == 2
    assert "matches 2 files" in one_error_line(err)


def test_a_file_that_is_not_gguf_is_not_kept(tiny: Tiny, capsys) -> None:
    code, _, err = run(capsys, "download", DRAFT_REPO, "--file", "README.md")
    assert code == 2
    assert "not a GGUF file" in one_error_line(err)
    assert cached(DRAFT_REPO, "README.md") is None


def test_unreachable_hub_says_so(hub_env: Path, capsys) -> None:
    code, _, err = run(capsys, "download", "org/any-GGUF", "--file", "m.gguf")  # HF_ENDPOINT: nothing listens
    assert code == 2
    assert "Cannot reach the Hub" in one_error_line(err)


def test_not_enough_disk_space_is_refused_before_downloading(tiny: Tiny, capsys, monkeypatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=100_000))
    code, _, err = run(capsys, "download", "tiny")
    assert code == 2
    line = one_error_line(err)
    assert "Not enough disk space" in line and hub.format_size(len(tiny.draft) + len(tiny.target)) in line
    assert tiny.hub.content_requests() == []


def test_vocabulary_mismatch_is_said_at_download_time(tiny: Tiny, capsys) -> None:
    code, _, err = run(capsys, "download", "mixed")
    assert code == 2
    assert one_error_line(err).startswith("error: Preset mixed: the draft")
    assert cached(LLAMA_REPO, LLAMA_FILE) is not None  # the files themselves are fine and kept


def test_development_models_are_never_downloaded(hub_env: Path, capsys) -> None:
    code, _, err = run(capsys, "download", "cpu-dev")
    assert code == 2
    line = one_error_line(err)
    assert "never downloaded" in line and str(hub_env / "models") in line and hub.FETCH_SCRIPT in line


# -- offline ---------------------------------------------------------------------------


def test_offline_uses_the_cache_without_any_request(tiny: Tiny, capsys, monkeypatch) -> None:
    assert run(capsys, "download", "tiny")[0] == 0
    tiny.hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = run(capsys, "download", "tiny")
    assert code == 0 and "tiny: ready" in out
    ready = ensure_files(resolve_preset(load_catalog(), "tiny"), Consent())
    assert ready.draft is not None and ready.draft.path == cached(DRAFT_REPO, DRAFT_FILE)
    assert tiny.hub.requests == []


def test_offline_names_what_is_missing(tiny: Tiny, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "download", "tiny-draft")
    assert code == 2
    line = one_error_line(err)
    assert DRAFT_FILE in line and "HF_HUB_OFFLINE" in line
    code, out, _ = run(capsys, "download", "tiny", "--dry-run")
    assert code == 0 and "tiny-draft: not downloaded" in out
    assert tiny.hub.requests == []


# -- consent: ensure_files -----------------------------------------------------------------


def tiny_preset(name: str = "tiny") -> ResolvedPreset:
    return resolve_preset(load_catalog(), name)


def test_ensure_files_without_consent_names_models_and_command(tiny: Tiny) -> None:
    with pytest.raises(UserError) as raised:
        ensure_files(tiny_preset(), Consent())
    message = str(raised.value)
    assert "tiny-draft, tiny-target" in message and "`specs-local download tiny`" in message
    assert tiny.hub.requests == []


def test_ensure_files_downloads_on_a_yes_at_the_prompt(tiny: Tiny, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    with pytest.raises(UserError, match="Nothing was downloaded"):
        ensure_files(tiny_preset(), Consent(interactive=True), echo=lambda _: None)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    ready = ensure_files(tiny_preset(), Consent(interactive=True), echo=lambda _: None)
    assert set(ready.roles) == {"draft", "target", "reward"} and ready.ready
    assert ready.reward.path == ready.target.path == cached(TARGET_REPO, TARGET_FILE)


def test_ensure_files_with_yes_downloads_and_checks_vocabularies(tiny: Tiny) -> None:
    with pytest.raises(VocabularyMismatch, match="Preset mixed"):
        ensure_files(tiny_preset("mixed"), Consent(assume_yes=True), echo=lambda _: None)
    ready = ensure_files(tiny_preset(), Consent(assume_yes=True), echo=lambda _: None)
    assert ready.draft is not None and ready.draft.path is not None
    assert ready.draft.path.read_bytes() == tiny.draft
