"""JSON over HTTP to model servers: one pool per model, one or more base URLs.

Requests go to the least busy server of the pool. A connection error or a 5xx
answer is retried with exponential back-off, on another server when there is
one; a server that failed is avoided for a while. A 4xx answer is the
caller's to fix and is never retried. Every error names the server.

Connections are kept alive, one per server per thread, so concurrent callers
(beams sampled in parallel, `bench --parallel`) never share a socket.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from engines.base import Cancelled, EngineError, ServerError, StopFn

_POLL_S = 0.05  # how often a waiting caller looks at should_stop


class ServerRefused(ServerError):
    """The server answered that the request cannot be served (4xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries of one request in all
    backoff_s: float = 0.5  # wait before the second try, doubled before each next one
    timeout_s: float = 600.0  # one request, connect to last byte
    down_s: float = 10.0  # how long a failed server is avoided while others are up


class Endpoint:
    """One server: its base URL, the paths under it, and a connection per thread."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"{url!r} is not a server URL; write it as http://host:port/v1 or https://host/v1.")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        # OpenAI paths hang under the URL (".../v1/completions"); vLLM's own
        # (/tokenize, /detokenize, /pooling) under the server root.
        self.api_root = parts.path.rstrip("/")
        self.server_root = self.api_root.removesuffix("/v1")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout_s
        self._local = threading.local()
        self.busy = 0  # requests in flight (guarded by the pool's lock)
        self.down_until = 0.0

    def __repr__(self) -> str:
        return f"<Endpoint {self.url}>"

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it was used before."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._local.conn = conn
        return conn, False

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def send(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        """One HTTP exchange; a kept-alive connection the server has since closed
        is replaced once, silently (that is not a server failure)."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for fresh_try in (False, True):
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=payload, headers=self._headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if reused and not fresh_try:
                    continue
                raise
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            return response.status, data
        raise AssertionError("unreachable")


class ServerPool:
    """The servers of one model; `call` sends a request to one of them, with retries."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not urls:
            raise EngineError("a remote model needs at least one server URL.")
        self.policy = policy or RetryPolicy()
        self.endpoints = [Endpoint(url, api_key, self.policy.timeout_s) for url in urls]
        self._lock = threading.Lock()
        self._sleep = sleep
        self._executor: ThreadPoolExecutor | None = None
        self.waited_s = 0.0  # wall time callers spent waiting on answers

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        for endpoint in self.endpoints:
            endpoint.close()

    # --- one request ------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        root: bool = False,
        server: Endpoint | None = None,
    ) -> dict[str, Any]:
        """The JSON answer to one request. `path` is relative to the API root
        (".../v1") or, with `root`, to the server root; `server` pins the
        request to one server (checks), else the least busy one takes it."""
        last = ""
        pinned = server
        server = pinned or self.endpoints[0]
        for attempt in range(self.policy.attempts):
            if attempt:
                self._sleep(self.policy.backoff_s * 2 ** (attempt - 1))
            server = self._acquire(pinned)
            full = f"{server.server_root if root else server.api_root}/{path}"
            try:
                status, data = server.send(method, full, body)
            except TimeoutError:
                self._release(server, failed=True)
                raise ServerError(
                    f"the server at {server.url} did not answer within {self.policy.timeout_s:g} s; "
                    "check that it is not overloaded, or raise the timeout."
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self._release(server, failed=True)
                last = _describe(exc)
                continue
            if status >= 500:
                self._release(server, failed=True)
                last = f"answered {status} ({_message(data)})"
                continue
            self._release(server, failed=False)
            if status >= 400:
                raise _refusal(server.url, status, data)
            try:
                answer = json.loads(data)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise ServerError(f"the server at {server.url} answered {path} with something that is not JSON.")
            return answer
        where = server.url if pinned or len(self.endpoints) == 1 else ", ".join(self.urls)
        raise ServerError(
            f"the server at {where} {last} after {self.policy.attempts} tries; "
            "check that it is running and reachable, then run again."
        )

    def _acquire(self, pinned: Endpoint | None) -> Endpoint:
        with self._lock:
            if pinned is not None:
                pinned.busy += 1
                return pinned
            now = time.monotonic()
            up = [e for e in self.endpoints if e.down_until <= now]
            pool = up or self.endpoints
            server = min(pool, key=lambda e: (e.busy, e.down_until))
            server.busy += 1
            return server

    def _release(self, server: Endpoint, *, failed: bool) -> None:
        with self._lock:
            server.busy -= 1
            if failed:
                server.down_until = time.monotonic() + self.policy.down_s
            else:
                server.down_until = 0.0

    # --- many requests ------------------------------------------------------------

    def call_all(
        self,
        requests: Sequence[tuple[str, dict[str, Any]]],
        *,
        root: bool = False,
        should_stop: StopFn | None = None,
    ) -> list[dict[str, Any]]:
        """POST each (path, body) concurrently; answers in order. The first
        failure is raised once every request has ended or been dropped."""
        t0 = time.perf_counter()
        try:
            if should_stop is not None and should_stop():
                raise Cancelled()
            if len(requests) == 1 and should_stop is None:
                path, body = requests[0]
                return [self.call("POST", path, body, root=root)]
            executor = self._pool(len(requests))
            futures = [executor.submit(self.call, "POST", path, body, root=root) for path, body in requests]
            return _gather(futures, should_stop)
        finally:
            self.waited_s += time.perf_counter() - t0

    def _pool(self, wanted: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                # Enough threads for a wide beam on every server; each keeps its connections.
                self._executor = ThreadPoolExecutor(
                    max_workers=max(16, 8 * len(self.endpoints)), thread_name_prefix="remote"
                )
            return self._executor


def _gather(futures: list[Future[dict[str, Any]]], should_stop: StopFn | None) -> list[dict[str, Any]]:
    pending: set[Future[dict[str, Any]]] = set(futures)
    while pending:
        _, pending = wait(pending, timeout=_POLL_S if should_stop else None, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for f in pending:
                f.cancel()
            error = failed.exception()
            assert error is not None, "chosen for having failed"
            raise error
        if pending and should_stop is not None and should_stop():
            for f in pending:
                f.cancel()
            raise Cancelled()
    return [f.result() for f in futures]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused the connection"
    if isinstance(exc, ssl.SSLError):
        return f"failed the TLS handshake ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"could not be reached ({exc.strerror})"
    return f"dropped the connection ({type(exc).__name__})"


def _message(data: bytes) -> str:
    """The error text of an answer: vLLM's {"error": {"message": ...}}, FastAPI's
    {"detail": ...}, or the start of the body."""
    try:
        answer = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace").strip() or "no message"
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if answer.get("message"):
            return str(answer["message"])
        if answer.get("detail"):
            return str(answer["detail"])
    return str(answer)[:200]


def _refusal(url: str, status: int, data: bytes) -> ServerRefused:
    if status == 401:
        return ServerRefused(
            f"the server at {url} refused the request as unauthorized (401); "
            "set the API key it expects in SPECS_LOCAL_API_KEY (or the variable the model's api_key_env names).",
            status,
        )
    if status == 403:
        return ServerRefused(f"the server at {url} refused the API key (403); use a key it accepts.", status)
    return ServerRefused(f"the server at {url} refused the request ({status}: {_message(data)}).", status)
