"""A real uvicorn server in a thread of the test process, on a free 127.0.0.1 port.

In-process, so a test can look at the engines behind the server (their live
sequences) while it talks to it over HTTP like any client.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from engines.testing.scripted import FakeClock


@contextmanager
def live_server(app: ASGIApp) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL (http://127.0.0.1:PORT)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def health(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return json.load(response)


def wait_idle(url: str, within: float) -> float:
    """Seconds until the server runs no search and has none waiting (fails after `within`)."""
    t0 = time.monotonic()
    while True:
        now = health(url)
        if not now["searching"] and not now["queued"]:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < within, now
        time.sleep(0.01)


class WallClock(FakeClock):
    """Real time for scripted models: each token takes the seconds it is said to
    cost, so a search lasts long enough to be queued behind or cancelled."""

    def __call__(self) -> float:
        return time.monotonic()

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)
