"""Keeping a preset's models loaded between questions, for one search at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

from app.config import Catalog, Preset
from app.search.settings import SearchSettings
from app.search.types import Engines

EnginesFactory = Callable[[Preset, Catalog, SearchSettings], AbstractContextManager[Engines]]


class EngineCache:
    """Opens a preset's engines on first use and keeps them until another preset
    (or a beam of another size, which needs other sequence pools) is asked for,
    or `close` is called.

    The lock is held for a whole search: a cancelled search thread keeps using
    the models until it notices the cancel, and the next search (or closing)
    must wait for it instead of sharing a llama.cpp context with it.
    """

    def __init__(self, factory: EnginesFactory) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None
        self._key: tuple[str, int, int] | None = None
        self._engines: Engines | None = None

    def is_open(self, preset: Preset, settings: SearchSettings) -> bool:
        return self._engines is not None and self._key == _key(preset, settings)

    @contextmanager
    def use(self, preset: Preset, catalog: Catalog, settings: SearchSettings) -> Iterator[Engines]:
        with self._lock:
            engines = self._engines if self.is_open(preset, settings) else None
            if engines is None:
                self._close_locked()
                stack = ExitStack()
                try:
                    engines = stack.enter_context(self._factory(preset, catalog, settings))
                except BaseException:
                    stack.close()
                    raise
                self._stack, self._key, self._engines = stack, _key(preset, settings), engines
            yield engines

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        stack, self._stack, self._key, self._engines = self._stack, None, None, None
        if stack is not None:
            stack.close()


def _key(preset: Preset, settings: SearchSettings) -> tuple[str, int, int]:
    return (preset.name, settings.n, settings.beam_width)
