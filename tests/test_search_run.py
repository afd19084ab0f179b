"""`app.search.run` for every method: checks, events, stats, traces, leaks, cancellation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.search import run
from app.search.events import (
    CandidateCompleted,
    CandidateFates,
    CandidatesDrafted,
    CandidatesScored,
    Deferred,
    DraftProgress,
    Event,
    Finished,
    SearchStarted,
    Stats,
    StepAccepted,
    StepStarted,
    SwitchedToDraft,
)
from app.search.settings import METHODS, SearchSettings
from app.search.trace import read_trace, write_trace
from engines.base import SYSTEM_PROMPT, ContextFullError
from engines.testing.scripted import ARITHMETIC_QUESTION, Continuation, ScriptedEngines, scripted_engines

LOOP = "Again.\n\n"


def solve(
    method: str,
    settings: SearchSettings | None = None,
    engines: ScriptedEngines | None = None,
    question: str = ARITHMETIC_QUESTION,
    should_stop=None,
    on_event=None,
) -> tuple[Finished, list[Event], ScriptedEngines]:
    engines = engines or scripted_engines()
    events: list[Event] = []

    def emit(event: Event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    finished = run(
        method, question, engines, settings or SearchSettings(), emit=emit, should_stop=should_stop, clock=engines.clock
    )
    return finished, events, engines


def of(events: list[Event], cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


# -- the request ---------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   \n "])
def test_an_empty_question_is_refused(question: str) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        solve("specs", question=question)


@pytest.mark.parametrize("method", ["specs", "rsd", "beam-draft"])
def test_methods_with_a_draft_refuse_to_run_without_one(method: str) -> None:
    with pytest.raises(ValueError, match=f"{method} needs a draft model"):
        solve(method, engines=scripted_engines(draft=None))


@pytest.mark.parametrize("method", ["beam", "best-of-n", "greedy"])
def test_target_methods_run_without_a_draft(method: str) -> None:
    finished, _, engines = solve(method, engines=scripted_engines(draft=None))
    assert finished.answer == "42" and "draft" not in finished.stats.models
    assert engines.live == 0


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown method 'magic'"):
        solve("magic")


def test_a_prompt_longer_than_the_context_raises_the_engine_error() -> None:
    engines = scripted_engines(n_ctx=10)
    prompt = len(engines.target.tokenize(engines.target.format_chat(SYSTEM_PROMPT, ARITHMETIC_QUESTION)))
    with pytest.raises(ContextFullError, match=f"{prompt} tokens do not fit the context of 10 tokens"):
        solve("specs", engines=engines)
    assert engines.live == 0


def test_a_context_filling_up_mid_search_ends_with_the_best_so_far() -> None:
    probe = scripted_engines()
    prompt = len(probe.target.tokenize(probe.target.format_chat(SYSTEM_PROMPT, ARITHMETIC_QUESTION)))
    engines = scripted_engines(n_ctx=prompt + 40)  # room for two steps of ~16 tokens
    finished, events, _ = solve("specs", engines=engines)
    assert finished.error is not None and "context" in finished.error
    accepted = "".join(e.text for e in of(events, StepAccepted))
    assert accepted and finished.solution == accepted
    assert engines.live == 0


# -- events -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_event_stream_is_well_formed(method: str) -> None:
    settings = SearchSettings(temperature=1.0, seed=4)
    finished, events, _ = solve(method, settings)
    assert isinstance(events[0], SearchStarted) and events[-1] is finished
    assert events[0].settings == settings.model_dump() and events[0].method == method
    assert events[0].models["target"] == "scripted-target"
    assert len(of(events, Finished)) == 1
    times = [e.t for e in events]
    assert times == sorted(times)
    started: set[tuple[int, str]] = set()
    drafted: dict[str, CandidatesDrafted] = {}
    known_parents = {""}
    for e in events:
        if isinstance(e, StepStarted):
            assert set(e.parents) <= known_parents
            started.add((e.step, e.origin))
        elif isinstance(e, (DraftProgress, CandidatesDrafted, CandidatesScored)):
            assert (e.step, e.origin) in started
        if isinstance(e, CandidatesDrafted):
            for c in e.candidates:
                assert c.id not in drafted and c.parent in known_parents
                assert c.id.startswith(f"{e.step}.{'t' if e.origin == 'target' else ''}")
                drafted[c.id] = e
        elif isinstance(e, CandidatesScored):
            assert all(drafted[s.id].step == e.step for s in e.scores)
        elif isinstance(e, CandidateFates):
            assert set(e.fates) <= set(drafted)
        elif isinstance(e, (StepAccepted, CandidateCompleted)):
            assert e.id in drafted
            if isinstance(e, StepAccepted):
                assert drafted[e.id].origin == e.origin
                known_parents.add(e.id)


@pytest.mark.parametrize("method", METHODS)
def test_stats_match_the_events_and_the_model_usage(method: str) -> None:
    finished, events, engines = solve(method, SearchSettings(temperature=1.0, seed=2))
    stats = finished.stats
    assert stats.wall_seconds == pytest.approx(engines.clock())
    for role in ("target", "reward", "draft"):
        usage = getattr(engines, role).usage
        model = stats.models[role]
        assert (model.generated, model.prefilled) == (usage.generated, usage.prefilled)
        assert model.seconds == pytest.approx(usage.seconds)
    assert stats.wall_seconds == pytest.approx(stats.model_seconds)  # a fake clock only moves in models
    assert stats.steps == stats.draft_steps + stats.target_steps > 0
    assert stats.completed == len(of(events, CandidateCompleted))
    assert stats.deferrals == len(of(events, Deferred))
    assert stats.switches == len(of(events, SwitchedToDraft))
    drafts = sum(len(e.candidates) for e in of(events, CandidatesDrafted) if e.origin == "draft")
    assert stats.drafts_proposed == drafts


def test_stats_count_only_this_search() -> None:
    engines = scripted_engines()
    first, _, _ = solve("specs", engines=engines)
    second, _, _ = solve("specs", engines=engines)
    assert second.stats.models["draft"].generated == first.stats.models["draft"].generated
    assert engines.draft is not None and engines.draft.usage.generated == 2 * first.stats.models["draft"].generated


def test_stats_become_json_in_one_shape() -> None:
    stats = Stats(wall_seconds=2.0, steps=4, draft_steps=3)
    record = dataclasses.asdict(stats)
    assert stats.to_json(derived=False) == record
    assert stats.to_json() == {**record, "acceptance_rate": 0.75, "overhead_seconds": 2.0}
    assert list(stats.to_json()) == [
        "wall_seconds", "models", "steps", "draft_steps", "target_steps", "drafts_proposed",
        "deferrals", "switches", "completed", "answer_forced", "acceptance_rate", "overhead_seconds",
    ]  # fmt: skip


def test_event_timings_come_from_the_clock() -> None:
    _, events, _engines = solve("greedy")
    first = of(events, CandidatesDrafted)[0]
    # One sampled token costs the target 0.04 s of the fake clock.
    assert first.seconds == pytest.approx(0.04 * first.candidates[0].n_tokens)


def test_draft_progress_names_the_candidates_and_grows_their_texts() -> None:
    _, events, _ = solve("specs")
    progress = [e for e in of(events, DraftProgress) if e.step == 1]
    drafted = next(e for e in of(events, CandidatesDrafted) if e.step == 1)
    assert progress and all(p.ids == tuple(c.id for c in drafted.candidates) for p in progress)
    for p in progress:
        assert all(c.text.startswith(text) for c, text in zip(drafted.candidates, p.texts))


@pytest.mark.parametrize("method", METHODS)
def test_traces_round_trip(method: str, tmp_path) -> None:
    _, events, _ = solve(method, SearchSettings(temperature=1.0, seed=1))
    path = tmp_path / "trace.jsonl"
    write_trace(path, events)
    assert list(read_trace(path)) == events


# -- sequences ---------------------------------------------------------------------------------


def loop_engines(n_seq_max: int) -> ScriptedEngines:
    """A step that can repeat forever, in a small pool of sequences."""
    script = {
        "": (Continuation(LOOP, -0.1), Continuation("Once.\n\n", -0.3)),
        LOOP: (Continuation(LOOP, -0.1),),
        "Once.\n\n": (Continuation(LOOP, -0.1),),
    }
    rewards = {LOOP: 0.9, "Once.\n\n": 0.8}
    return scripted_engines(draft=script, target=script, rewards=rewards, n_seq_max=n_seq_max, n_ctx=100_000)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("beam_width", [1, 2])
def test_long_searches_do_not_leak_sequences(method: str, beam_width: int) -> None:
    # 120 steps with a pool of 12 per model: one leaked sequence a step exhausts it.
    settings = SearchSettings(n=4, beam_width=beam_width, max_steps=120, temperature=1.0, tau_accept=5.0)
    finished, _events, engines = solve(method, settings, loop_engines(n_seq_max=12))
    assert finished.stats.steps == 120
    assert engines.live == 0
    assert engines.target.peak_live <= 2 + 2 * settings.n


def test_arithmetic_searches_release_everything() -> None:
    for method in METHODS:
        _, _, engines = solve(method)
        assert engines.live == 0, method


# -- cancellation -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_cancel_between_steps_returns_the_best_prefix(method: str) -> None:
    stop = False

    def on_event(event: Event) -> None:
        nonlocal stop
        stop = stop or isinstance(event, StepAccepted)

    finished, events, engines = solve(method, should_stop=lambda: stop, on_event=on_event)
    assert finished.cancelled and finished.answer is None
    first = next(i for i, e in enumerate(events) if isinstance(e, StepAccepted))
    # Nothing new starts after the stop: the accepted step's leftovers, then Finished.
    assert not of(events[first + 1 :], StepStarted)
    assert finished.solution == events[first].text
    assert engines.live == 0


@pytest.mark.parametrize("method", METHODS)
def test_cancel_while_sampling_stops_the_model_call(method: str) -> None:
    stop = False

    def on_event(event: Event) -> None:
        nonlocal stop
        stop = stop or isinstance(event, DraftProgress)

    finished, events, engines = solve(method, should_stop=lambda: stop, on_event=on_event)
    assert finished.cancelled and finished.solution == ""
    assert len(of(events, DraftProgress)) == 1 and not of(events, CandidatesDrafted)
    assert engines.live == 0
    # The model stopped after the token step that reported progress.
    assert finished.stats.models["target"].generated + finished.stats.models["draft"].generated <= 2 * 4


def test_numpy_numbers_from_engines_become_plain_floats() -> None:
    engines = scripted_engines()
    plain_score = engines.reward.score
    engines.reward.score = lambda queries, **kw: [np.float64(r) for r in plain_score(queries, **kw)]
    _, events, _ = solve("specs", engines=engines)
    scores = [s for e in of(events, CandidatesScored) for s in e.scores]
    assert scores and all(type(s.reward) is float and type(s.tilted) is float for s in scores)
