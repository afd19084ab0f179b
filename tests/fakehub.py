"""A loopback stand-in for the Hugging Face Hub, for the real huggingface_hub client.

It speaks the part of the Hub's HTTP that downloads use, the way the Hub does:

- HEAD/GET /{repo}/resolve/{revision}/{file}: a 302 to a content server on
  another origin (as the Hub redirects LFS files to its CDN) carrying
  X-Repo-Commit, X-Linked-Etag (the sha256) and X-Linked-Size;
- errors with the X-Error-Code header the client maps to exceptions:
  RepoNotFound (404), GatedRepo (401), RevisionNotFound, EntryNotFound;
- GET /api/models/{repo}/tree/{revision}: the file list, LFS fields included;
- the content server answers Range requests with 206 and Content-Range.

Faults are switched on per test: `cut_next(n)` makes the next content
response stop after n bytes and drop the connection; `corrupt(repo, file)`
serves changed bytes under the true sha256; `ignore_ranges` answers Range
requests with the whole file (as some CDNs do); `seconds_per_piece` sends
content in 64 KiB pieces that far apart (a slow line). Every request is logged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from huggingface_hub import constants as hf_constants

ROOT = Path(__file__).resolve().parents[1]
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/?]+)")
_RANGE = re.compile(r"^bytes=(\d+)-$")
_PIECE = 64 * 1024


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str
    gated: bool = False


@dataclass
class LoggedRequest:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[LoggedRequest] = field(default_factory=list)
    ignore_ranges: bool = False
    seconds_per_piece: float = 0.0
    _cuts: list[int] = field(default_factory=list)
    _corrupt: set[str] = field(default_factory=set)  # sha256 of files served damaged
    _blobs: dict[str, bytes] = field(default_factory=dict)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            handler = type(f"{role}Handler", (_Handler,), {"fake": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, gated: bool = False) -> FakeRepo:
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        repo = FakeRepo(files=dict(files), commit=commit, gated=gated)
        self.repos[repo_id] = repo
        for content in files.values():
            self._blobs[hashlib.sha256(content).hexdigest()] = content
        return repo

    def cut_next(self, n_bytes: int) -> None:
        """The next content response sends `n_bytes` of its body, then drops the connection."""
        self._cuts.append(n_bytes)

    def corrupt(self, repo_id: str, file: str) -> None:
        self._corrupt.add(hashlib.sha256(self.repos[repo_id].files[file]).hexdigest())

    def content_requests(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.server == "cdn" and r.method == "GET"]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    role: str

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        self.fake.requests.append(LoggedRequest(self.role, self.command, self.path, self.headers.get("Range")))
        if self.role == "cdn":
            self._content(self.path.lstrip("/"), body)
            return
        if match := _TREE.match(self.path):
            self._tree(match["repo"], match["rev"])
        elif match := _RESOLVE.match(self.path):
            self._resolve(match["repo"], match["rev"], match["file"])
        else:
            self._error(404, "EntryNotFound", "Not found")

    def _repo(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        elif repo.gated and "authorization" not in self.headers:
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated"
                " to access it. Please log in.",
            )
        elif revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", "Invalid rev id")
        else:
            return repo
        return None

    def _resolve(self, repo_id: str, revision: str, file: str) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if file not in repo.files:
            self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
            return
        content = repo.files[file]
        sha = hashlib.sha256(content).hexdigest()
        self.send_response(302)
        self.send_header("Location", f"{self.fake.cdn_url}/{sha}")
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(content)))
        self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _tree(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        listing = [
            {
                "type": "file",
                "path": name,
                "size": len(content),
                "oid": hashlib.sha1(content).hexdigest(),
                "lfs": {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134},
            }
            for name, content in repo.files.items()
        ]
        payload = json.dumps(listing).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _content(self, sha: str, body: bool) -> None:
        content = self.fake._blobs.get(sha)
        if content is None:
            self.send_error(404)
            return
        if sha in self.fake._corrupt:  # one byte in the middle, as a bad transfer would
            middle = len(content) // 2
            content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1 :]
        start = 0
        match = _RANGE.match(self.headers.get("Range", ""))
        if match and not self.fake.ignore_ranges:
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            self.send_response(200)
        part = content[start:]
        self.send_header("Content-Length", str(len(part)))
        self.send_header("ETag", f'"{sha}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        if self.fake._cuts:
            part = part[: self.fake._cuts.pop(0)]
            self.close_connection = True
        if not self.fake.seconds_per_piece:
            self.wfile.write(part)
            return
        try:
            for start in range(0, len(part), _PIECE):
                self.wfile.write(part[start : start + _PIECE])
                self.wfile.flush()
                time.sleep(self.fake.seconds_per_piece)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped (a Ctrl-C test)
            self.close_connection = True

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        payload = json.dumps({"error": message}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def tiny_gguf_module() -> ModuleType:
    """scripts/tiny_gguf.py (scripts/ is not a package)."""
    if "tiny_gguf" in sys.modules:
        return sys.modules["tiny_gguf"]
    spec = importlib.util.spec_from_file_location("tiny_gguf", ROOT / "scripts" / "tiny_gguf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_gguf"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


_TINY: dict[tuple[str, int], bytes] = {}


def build_tiny_gguf(family: str = "qwen", seed: int = 0) -> bytes:
    """The bytes of a tiny valid GGUF model (a few hundred kB), cached per family and seed."""
    key = (family, seed)
    if key not in _TINY:
        module = tiny_gguf_module()
        writer = {"qwen": module.write_qwen_like, "llama": module.write_llama_like}[family]
        with tempfile.TemporaryDirectory() as tmp:
            path = writer(Path(tmp) / "model.gguf", seed=seed)
            _TINY[key] = path.read_bytes()
    return _TINY[key]


# -- fixtures (test modules load them with `pytest_plugins = ["fakehub"]`) ----------


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, user catalog and models folder under tmp_path, and no way out.

    huggingface_hub reads its settings at import, so the few it consults at
    call time are patched on `constants`; everything app.hub reads, it reads
    from the environment on each call.
    """
    for var in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "SPECS_LOCAL_THREADS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no test reaches a real Hub
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "user-models.toml"))
    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no agent-registry fetch
    # 64 KiB chunks make a 440 kB test file span several chunks, as a multi-GB
    # file spans the real 10 MB ones: cuts and interrupts fall between chunks.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    return tmp_path


@pytest.fixture
def fake_hub(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.stop()


@pytest.fixture
def tiny_gguf() -> Callable[..., bytes]:
    """`tiny_gguf(family="qwen", seed=0)`: the bytes of a tiny valid GGUF model."""
    return build_tiny_gguf
