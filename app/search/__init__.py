"""The search algorithms: SPECS and its baselines, pure Python over engines.base.

`run` is the one entry point: it checks the request, runs the method, and
turns cancellation into a `Finished(cancelled=True)` carrying the best
solution found so far. Every event goes to `emit` as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.search.context import Clock, SearchContext
from app.search.events import Event, Finished
from app.search.methods import draftless_methods, method_spec
from app.search.settings import SearchSettings
from app.search.types import Engines
from engines.base import Cancelled, ContextFullError, ServerError, StopFn


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
    context that fills up later, or a model server that fails mid-search,
    ends the search with the best solution so far and the error in
    `Finished.error`.
    """
    spec = method_spec(method)
    if not question.strip():
        raise ValueError("The question is empty; type a math problem to solve.")
    if spec.needs_draft and engines.draft is None:
        raise ValueError(
            f"Method {method} needs a draft model; choose a preset with a draft or the {draftless_methods()} method."
        )
    thresholds = spec.thresholds_in(settings.model_dump())
    ctx = SearchContext(method, question, engines, settings, emit, should_stop, clock, thresholds)
    ctx.search_started()
    vote = spec.selection == "vote"
    try:
        try:
            spec.search(ctx)
        except Cancelled:
            return ctx.finish(vote=vote, cancelled=True)
        except (ContextFullError, ServerError) as exc:
            if ctx.started:
                return ctx.finish(vote=vote, error=str(exc))
            raise
        return ctx.finish(vote=vote)
    finally:
        ctx.release_all()
