"""Traces recorded by earlier versions still load, and the same search run
today makes the same decisions as the one recorded.

tests/data/trace-*-v0.jsonl were written by the search before the method
registry and the step object existed (scripted engines, see ENGINES for how
each was made); they must keep loading as long as `replay` promises to play
old traces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_search_arithmetic import fooled_engines
from test_search_baselines import branching_engines

from app.search import run
from app.search.events import (
    CandidateCompleted,
    Deferred,
    Event,
    Finished,
    SearchStarted,
    StepAccepted,
    StepStarted,
    SwitchedToDraft,
)
from app.search.settings import SearchSettings
from app.search.trace import read_trace
from engines.scripted import ScriptedEngines, scripted_engines

DATA = Path(__file__).parent / "data"
ENGINES: dict[str, Callable[[], ScriptedEngines]] = {
    "specs": scripted_engines,
    "specs-doubted": fooled_engines,
    "beam": branching_engines,
    "rsd": scripted_engines,
    "greedy": scripted_engines,
    "best-of-n": branching_engines,
}


def old_trace(name: str) -> list[Event]:
    return list(read_trace(DATA / f"trace-{name}-v0.jsonl"))


def decisions(events: list[Event]) -> list[tuple]:
    """What a search decided, in order, in fields every version of the events has."""
    out: list[tuple] = []
    for e in events:
        if isinstance(e, StepStarted):
            out.append(("start", e.step, e.origin, e.parents))
        elif isinstance(e, StepAccepted):
            out.append(("accept", e.step, e.id, e.origin, e.text, e.reward))
        elif isinstance(e, Deferred):
            out.append(("defer", e.step))
        elif isinstance(e, SwitchedToDraft):
            out.append(("switch", e.step, e.reward))
        elif isinstance(e, CandidateCompleted):
            out.append(("complete", e.step, e.id, e.solution, e.answer, e.reason))
    return out


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_an_old_trace_loads_and_the_same_search_decides_the_same(name: str) -> None:
    recorded = old_trace(name)
    started, finished = recorded[0], recorded[-1]
    assert isinstance(started, SearchStarted) and isinstance(finished, Finished)
    engines = ENGINES[name]()
    events: list[Event] = []
    settings = SearchSettings(**started.settings)
    again = run(started.method, started.question, engines, settings, emit=events.append, clock=engines.clock)
    assert [type(e) for e in events] == [type(e) for e in recorded]
    assert [e.t for e in events] == [e.t for e in recorded]
    assert decisions(events) == decisions(recorded)
    assert (again.answer, again.solution, again.stats) == (finished.answer, finished.solution, finished.stats)
