"""Bringing model files from the Hugging Face Hub: what a remote file is, and resumable downloads.

Downloads land in the standard Hugging Face cache (or a chosen directory).
huggingface_hub 2.4 restarts an interrupted download from zero (every attempt
writes a new, uniquely named temporary file and deletes it on failure;
huggingface/huggingface_hub#4196), which for a 5 GB GGUF on a flaky line is
no good. So the bytes go through the library's own `http_get` into a stable
`blobs/<etag>.incomplete` that the next run resumes with a Range request, and
`hf_hub_download` then files the finished blob into the cache (snapshot link,
refs) exactly as it files its own downloads.

huggingface_hub reads HF_ENDPOINT (like HF_HOME and HF_HUB_OFFLINE) once, at
import; this module reads it on every call and passes it explicitly.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from app.config import ModelEntry, user_config_path
from app.errors import UserError
from app.hub import (
    Echo,
    FileProblem,
    ModelFileRejected,
    file_problem,
    format_size,
    hub_cache_dir,
    offline,
    where_to_put,
)

if TYPE_CHECKING:
    from huggingface_hub.utils.tqdm import tqdm

DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# What huggingface_hub raises for a bad id, an HTTP error or no network (its HTTP errors are OSErrors).
_HUB_ERRORS = (httpx2.HTTPError, OSError, HFValidationError)


class DownloadError(UserError):
    """A file could not be fetched; the message names the fix."""


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# -- the Hub ------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    file: str
    revision: str  # as asked (a branch, tag or commit)
    commit: str
    etag: str  # the sha256 of the content for LFS files (every GGUF)
    size: int | None

    @property
    def content_sha256(self) -> str | None:
        return self.etag if _SHA256.match(self.etag) else None


def remote_file(repo: str, file: str, revision: str = "main") -> RemoteFile:
    """Commit, etag and size of a file on the Hub (one HEAD request)."""
    if offline():
        raise _offline_error(repo, file)
    endpoint = hub_endpoint()
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, file, revision=revision, endpoint=endpoint), endpoint=endpoint)
    except _HUB_ERRORS as exc:
        raise describe_hub_error(exc, repo, file, revision) from None
    if meta.commit_hash is None or meta.etag is None:
        raise DownloadError(
            f"{endpoint} did not answer like the Hugging Face Hub for {repo}/{file}; check HF_ENDPOINT and any proxy."
        )
    return RemoteFile(repo, file, revision, meta.commit_hash, meta.etag, meta.size)


def describe_hub_error(exc: Exception, repo: str, file: str, revision: str) -> DownloadError:
    """One sentence for what the Hub or the network said (`exc` is one of _HUB_ERRORS)."""
    endpoint = hub_endpoint()
    if isinstance(exc, HFValidationError):
        return DownloadError(f"{repo!r} is not a Hub repository id; write it as owner/name.")
    if isinstance(exc, GatedRepoError):
        return DownloadError(
            f"{repo} is gated: accept its conditions at {endpoint}/{repo} while logged in, then set HF_TOKEN"
            f" to an access token of that account ({endpoint}/settings/tokens)."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(
            f"The Hub has no repository {repo}: check the name, or if it is private set HF_TOKEN to a token"
            " that can read it."
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(
            f"{repo} has no revision {revision!r}; pass an existing branch, tag or commit with --revision."
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return DownloadError(f"{repo} has no file {file} at revision {revision!r}{_gguf_files_hint(repo, revision)}.")
    if isinstance(exc, OfflineModeIsEnabled | LocalEntryNotFoundError):
        return _offline_error(repo, file)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return DownloadError(f"The Hub answered HTTP {exc.response.status_code} for {repo}/{file}; try again later.")
    return DownloadError(
        f"Cannot reach the Hub at {endpoint} ({type(exc).__name__}); check the network, or set"
        f" HF_HUB_OFFLINE=1 to use only models already downloaded."
    )


def _gguf_files(repo: str, revision: str) -> list[str]:
    """The GGUF files of a repo at a revision (one listing request)."""
    if offline():
        raise DownloadError(
            f"Listing the files of {repo} needs the network but HF_HUB_OFFLINE is set; name the file exactly."
        )
    try:
        files = HfApi(endpoint=hub_endpoint()).list_repo_files(repo, revision=revision)
    except _HUB_ERRORS as exc:
        raise describe_hub_error(exc, repo, "", revision) from None
    return sorted(f for f in files if f.endswith(".gguf"))


def _gguf_files_hint(repo: str, revision: str) -> str:
    try:
        files = _gguf_files(repo, revision)
    except DownloadError:
        return ""
    return f"; its GGUF files are: {', '.join(files[:8])}" if files else ""


def match_repo_file(repo: str, pattern: str, revision: str = "main") -> str:
    """The one GGUF file of a repo that a glob such as `*Q4_K_M.gguf` matches."""
    if not any(c in pattern for c in "*?["):
        return pattern
    ggufs = _gguf_files(repo, revision)
    matches = [f for f in ggufs if fnmatch.fnmatch(f, pattern)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listing = ", ".join(ggufs[:12]) or "none"
        raise DownloadError(f"No GGUF file of {repo} matches {pattern!r}; its GGUF files are: {listing}.")
    raise DownloadError(
        f"{pattern!r} matches {len(matches)} files of {repo} ({', '.join(matches[:12])}); name one with --file."
    )


def _offline_error(repo: str, file: str) -> DownloadError:
    return DownloadError(
        f"{file} of {repo} is not downloaded and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it."
    )


# -- downloading ----------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a remote file's bytes go: the HF cache (blob by etag) or a directory."""

    local_dir: Path | None = None

    def final(self, remote: RemoteFile) -> Path:
        if self.local_dir is not None:
            return self.local_dir / remote.file
        return self._storage(remote) / "blobs" / remote.etag

    def partial(self, remote: RemoteFile) -> Path:
        if self.local_dir is not None:
            flat = remote.file.replace("/", "--")
            return self.local_dir / ".cache" / "specs-local" / f"{flat}.{remote.etag}.incomplete"
        return self.final(remote).with_name(remote.etag + ".incomplete")

    def lock(self, remote: RemoteFile) -> Path:
        if self.local_dir is not None:
            return self.partial(remote).with_suffix(".lock")
        # The library's own lock for this blob, so it never writes the blob at the same time.
        folder = repo_folder_name(repo_id=remote.repo, repo_type="model")
        return hub_cache_dir() / ".locks" / folder / f"{remote.etag}.lock"

    def directory(self) -> Path:
        return self.local_dir if self.local_dir is not None else hub_cache_dir()

    def _storage(self, remote: RemoteFile) -> Path:
        return hub_cache_dir() / repo_folder_name(repo_id=remote.repo, repo_type="model")

    def present(self, remote: RemoteFile) -> Path | None:
        """The finished file for this remote version, if it is already here."""
        final = self.final(remote)
        return final if final.is_file() else None

    def partial_bytes(self, remote: RemoteFile) -> int:
        return _size(self.partial(remote))

    def needed_bytes(self, remote: RemoteFile) -> int:
        if self.present(remote) is not None or remote.size is None:
            return 0
        return max(remote.size - self.partial_bytes(remote), 0)


def free_bytes(directory: Path) -> int:
    """Free space where `directory` is (or will be created)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_free_space(directory: Path, needed: int) -> None:
    """Fail before downloading rather than half way through."""
    free = free_bytes(directory)
    if needed > free:
        raise DownloadError(
            f"Not enough disk space in {directory}: the download needs {format_size(needed)} and only"
            f" {format_size(free)} is free; free some space, or download to another disk with --local-dir"
            " (or HF_HOME)."
        )


def fetch(
    remote: RemoteFile,
    *,
    destination: Destination | None = None,
    sha256: str | None = None,
    tqdm_class: type[tqdm] | None = None,
    echo: Echo,
) -> Path:
    """Download (or resume) one file into `destination` (the HF cache by default), verify it, return its path."""
    destination = destination or Destination()
    if sha256 and remote.content_sha256 and remote.content_sha256 != sha256:
        raise DownloadError(
            f"{remote.repo}/{remote.file} at {remote.revision!r} is not the file models.toml pins (the Hub's"
            f" sha256 is {remote.content_sha256[:12]}…, the pin {sha256[:12]}…); set `revision` to the pinned"
            f" commit, or update `sha256` in {user_config_path()} if the new file is wanted."
        )
    expected = sha256 or remote.content_sha256
    final = destination.present(remote)
    if final is not None and (problem := file_problem(final, expected, name=remote.file, echo=echo)):
        final.unlink()
        echo(f"The {remote.file} already here {problem.text}; downloading it again.")
        final = None
    if final is None:
        final = _transfer(remote, destination, tqdm_class, echo)
        if problem := file_problem(final, expected, name=remote.file, echo=echo):
            final.unlink()
            raise ModelFileRejected(
                f"The downloaded {remote.file} {problem.text}, so it was deleted; {_refetch_fix(remote, problem, expected)}."
            )
    if destination.local_dir is not None:
        return final
    try:
        # Finds the blob in place and only links the snapshot and writes refs.
        linked = hf_hub_download(
            remote.repo, remote.file, revision=remote.revision, cache_dir=hub_cache_dir(), endpoint=hub_endpoint()
        )
    except _HUB_ERRORS as exc:
        raise describe_hub_error(exc, remote.repo, remote.file, remote.revision) from None
    return Path(linked)


def _refetch_fix(remote: RemoteFile, problem: FileProblem, expected_sha256: str | None) -> str:
    """What to do about a file that arrived unfit: fetching it again helps only when
    the bytes changed on the way."""
    if problem.kind == "not-gguf":
        return "download a .gguf file of the repo"
    if problem.kind == "header" and expected_sha256 is not None:  # the bytes are the Hub's own
        return f"{remote.repo} serves it damaged, so choose another of its GGUF files with --file"
    return "run the same command again"


def _transfer(remote: RemoteFile, destination: Destination, tqdm_class: type[tqdm] | None, echo: Echo) -> Path:
    final, partial, lock = destination.final(remote), destination.partial(remote), destination.lock(remote)
    partial.parent.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if final.is_file():  # another process finished it while we waited
            return final
        have = _size(partial)
        if remote.size is not None and have > remote.size:
            partial.unlink()  # longer than the file: not a prefix of it
            have = 0
        check_free_space(partial.parent, (remote.size or 0) - have)
        if have:
            echo(f"resuming {remote.file} at {format_size(have)} of {format_size(remote.size)}")
        url = hf_hub_url(remote.repo, remote.file, revision=remote.commit, endpoint=hub_endpoint())
        try:
            with open(partial, "ab") as out:
                http_get(
                    url,
                    out,
                    resume_size=have,
                    headers=build_hf_headers(library_name="specs-local"),
                    expected_size=remote.size,
                    displayed_filename=remote.file,
                    tqdm_class=tqdm_class,
                )
        except KeyboardInterrupt:
            echo(
                f"Interrupted: {format_size(_size(partial))} of {remote.file} kept in {partial};"
                " run the same command again to resume."
            )
            raise
        except (httpx2.HTTPError, OSError) as exc:
            got = _size(partial)
            if remote.size is not None and got > remote.size:
                partial.unlink()
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            first = f"free some space in {partial.parent}, then " if _disk_full(exc) else ""
            raise DownloadError(
                f"The download of {remote.file} stopped at {format_size(got)} of {format_size(remote.size)}"
                f" ({reason}); {first}run the same command again to resume it."
            ) from None
        os.replace(partial, final)
    return final


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:  # a failed flush on close may stand in front of the write that failed
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__context__
    return False


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@dataclass(frozen=True)
class Fetched:
    entry: ModelEntry
    remote: RemoteFile
    path: Path


def download_models(
    entries: Sequence[ModelEntry],
    *,
    destination: Destination | None = None,
    echo: Echo,
) -> list[Fetched]:
    """Download Hub models one after the other, after checking that all of them fit on disk."""
    destination = destination or Destination()
    remotes = []
    for entry in entries:
        if not entry.repo:
            raise UserError(where_to_put([entry]))
        remotes.append(remote_file(entry.repo, entry.file, entry.revision))
    check_free_space(destination.directory(), sum(destination.needed_bytes(r) for r in remotes))
    fetched = []
    for entry, remote in zip(entries, remotes, strict=True):
        echo(f"{entry.name}: {remote.file} ({format_size(remote.size)}) from {remote.repo}")
        path = fetch(remote, destination=destination, sha256=entry.sha256, echo=echo)
        fetched.append(Fetched(entry, remote, path))
    return fetched
