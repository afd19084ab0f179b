"""Traces recorded by earlier versions still load, and the same search run
today makes the same decisions as the one recorded.

tests/data/trace-*-v0.jsonl were written by the search before the method
registry and the step object existed (scripted engines, see ENGINES for how
each was made); they must keep loading as long as `replay` promises to play
old traces.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_search_arithmetic import fooled_engines
from test_search_baselines import branching_engines

from app.render import deferral_reason
from app.search import run
from app.search.events import (
    CandidateCompleted,
    CandidatesScored,
    Deferred,
    Event,
    Finished,
    SearchStarted,
    StepAccepted,
    StepStarted,
    SwitchedToDraft,
)
from app.search.methods import REGISTRY
from app.search.settings import SearchSettings
from app.search.trace import read_trace
from app.tui.deferrals import deferral_line
from app.tui.latency import LatencyPanel
from app.tui.rewards import RewardChart
from engines.testing.scripted import ScriptedEngines, scripted_engines

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


def old_lines(name: str, event: str) -> list[dict]:
    lines = (DATA / f"trace-{name}-v0.jsonl").read_text(encoding="utf-8").splitlines()
    return [data for data in map(json.loads, lines) if data["event"] == event]


def rerun(name: str) -> list[Event]:
    """The search the trace recorded, run again by today's code."""
    started = old_trace(name)[0]
    assert isinstance(started, SearchStarted)
    engines = ENGINES[name]()
    events: list[Event] = []
    settings = SearchSettings(**started.settings)
    run(started.method, started.question, engines, settings, emit=events.append, clock=engines.clock)
    return events


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


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_old_traces_gain_the_thresholds_their_method_decides_by(name: str) -> None:
    started = old_trace(name)[0]
    assert isinstance(started, SearchStarted)
    assert started.thresholds == REGISTRY[started.method].thresholds_in(started.settings)
    assert started.thresholds == rerun(name)[0].thresholds


@pytest.mark.parametrize("name", ["specs", "specs-doubted", "rsd"])
def test_old_deferrals_read_as_they_were_written(name: str) -> None:
    written = [line["reason"] for line in old_lines(name, "Deferred")]
    loaded = [e for e in old_trace(name) if isinstance(e, Deferred)]
    assert written and [deferral_reason(e) for e in loaded] == written
    # Today's run says the same sentences, from its numbers.
    assert [deferral_reason(e) for e in rerun(name) if isinstance(e, Deferred)] == written


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_old_scores_keep_their_meaning_under_their_new_names(name: str) -> None:
    """The one `score` of old traces becomes the tilted score, the reward or
    the log-probability; whichever it was, it is the event's merit today."""
    for old, new in zip(old_trace(name), rerun(name)):
        assert type(old) is type(new)
        if isinstance(old, CandidatesScored):
            assert [(s.id, s.reward, s.tilted, s.merit) for s in old.scores] == [
                (s.id, s.reward, s.tilted, s.merit) for s in new.scores
            ]
        elif isinstance(old, (StepAccepted, CandidateCompleted)):
            assert (old.reward, old.tilted, old.merit) == (new.reward, new.tilted, new.merit)
        elif isinstance(old, Deferred):
            assert (old.best, old.threshold) == (new.best, new.threshold)
            if old.doubted:
                assert (old.doubted, old.drafts) == (new.doubted, new.drafts)
        elif isinstance(old, SwitchedToDraft):
            assert old == new


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_old_traces_feed_the_readers_as_a_fresh_run_does(name: str) -> None:
    readers = []
    for events in (old_trace(name), rerun(name)):
        chart, latency = RewardChart(), LatencyPanel()
        for event in events:
            chart.apply(event)
            latency.apply(event)
        lines = [deferral_line(e).plain for e in events if isinstance(e, (Deferred, SwitchedToDraft))]
        readers.append((chart.thresholds, chart.steps, latency.uses_draft, latency.deferrals, lines))
    assert readers[0] == readers[1]
