"""While the app owns the terminal, log records go to a file instead of stderr
(a traceback printed over the screen would garble it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs


def default_log_path() -> Path:
    env = os.environ.get("SPECS_LOCAL_LOG")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_log_path("specs-local") / "tui.log"


@contextmanager
def divert_logging(path: Path) -> Iterator[Path]:
    """Swap the root logger's handlers for one that appends to `path`."""
    root = logging.getLogger()
    saved = root.handlers[:]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    try:
        yield path
    finally:
        root.handlers = saved
        handler.close()
