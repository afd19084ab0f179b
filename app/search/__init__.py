"""The search algorithms: SPECS and its baselines, pure Python over engines.base.

`run` is the one entry point: it checks the request, runs the method, and
turns cancellation into a `Finished(cancelled=True)` carrying the best
solution found so far. Every event goes to `emit` as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.search import beam, best_of_n, greedy, rsd, specs
from app.search.context import Clock, SearchContext
from app.search.events import Event, Finished
from app.search.settings import METHODS, SearchSettings
from app.search.types import Engines
from engines.base import Cancelled, ContextFullError, StopFn


@dataclass(frozen=True)
class _Method:
    search: Callable[[SearchContext], None]
    needs_draft: bool = False
    vote: bool = False  # the method's own rule picks the answer by a reward-weighted vote


_METHODS: dict[str, _Method] = {
    "specs": _Method(specs.search, needs_draft=True),
    "beam": _Method(beam.search_target),
    "beam-draft": _Method(beam.search_draft, needs_draft=True),
    "rsd": _Method(rsd.search, needs_draft=True),
    "best-of-n": _Method(best_of_n.search, vote=True),
    "greedy": _Method(greedy.search),
}
assert set(_METHODS) == set(METHODS)


def run(
    method: str,
    question: str,
    engines: Engines,
    settings: SearchSettings,
    *,
    emit: Callable[[Event], None] = lambda event: None,
    should_stop: StopFn | None = None,
    clock: Clock = time.monotonic,
) -> Finished:
    """Solve `question` with `method`, emitting every event; returns the `Finished` event.

    Raises ValueError for an empty question, an unknown method or a method
    that needs a draft model when there is none, and the engine's
    ContextFullError when the prompt does not fit a model's context. A
    context that fills up later ends the search with the best solution so
    far and the error in `Finished.error`.
    """
    if method not in _METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if not question.strip():
        raise ValueError("The question is empty; type a math problem to solve.")
    chosen = _METHODS[method]
    if chosen.needs_draft and engines.draft is None:
        raise ValueError(
            f"Method {method} needs a draft model; "
            "choose a preset with a draft or the beam, best-of-n or greedy method."
        )
    ctx = SearchContext(method, question, engines, settings, emit, should_stop, clock)
    ctx.search_started()
    try:
        try:
            chosen.search(ctx)
        except Cancelled:
            return ctx.finish(vote=chosen.vote, cancelled=True)
        except ContextFullError as exc:
            if ctx.started:
                return ctx.finish(vote=chosen.vote, error=str(exc))
            raise
        return ctx.finish(vote=chosen.vote)
    finally:
        ctx.release_all()
