"""Past questions, kept across sessions in the user data directory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

MAX_ENTRIES = 200


def default_history_path() -> Path:
    env = os.environ.get("SPECS_LOCAL_HISTORY")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("specs-local") / "history.json"


class History:
    """Questions, oldest first, with a cursor for up/down recall.

    The cursor sits one past the newest entry until the user walks back; a
    question asked again moves to the end instead of appearing twice.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: list[str] = self._load()
        self._cursor = len(self.entries)

    def _load(self) -> list[str]:
        if self.path is None or not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            # A damaged history must not keep the app from starting.
            log.warning("ignoring unreadable question history %s: %s", self.path, exc)
            return []
        if not isinstance(data, list):
            return []
        return [q for q in data if isinstance(q, str) and q.strip()][-MAX_ENTRIES:]

    def add(self, question: str) -> None:
        question = question.strip()
        if not question:
            return
        if question in self.entries:
            self.entries.remove(question)
        self.entries.append(question)
        del self.entries[:-MAX_ENTRIES]
        self._cursor = len(self.entries)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries, ensure_ascii=False, indent=0), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot save question history to %s: %s", self.path, exc)

    def previous(self) -> str | None:
        """The entry before the cursor, or None at the oldest."""
        if self._cursor == 0:
            return None
        self._cursor -= 1
        return self.entries[self._cursor]

    def next(self) -> str | None:
        """The entry after the cursor; "" when walking past the newest."""
        if self._cursor >= len(self.entries):
            return None
        self._cursor += 1
        return self.entries[self._cursor] if self._cursor < len(self.entries) else ""
