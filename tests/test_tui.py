"""The terminal app on the scripted engines: Pilot tests, snapshots, replay."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from textual.notifications import Notify
from textual.widgets import Digits, Select, Static
from textual.worker import WorkerState

from app.commands import tui as tui_command
from app.config import load_catalog
from app.render import stats_footer
from app.search import run
from app.search.events import (
    BeamPruned,
    CandidateCompleted,
    CandidateFates,
    CandidatesDrafted,
    CandidatesScored,
    Deferred,
    DraftProgress,
    Event,
    Finished,
    StepAccepted,
    SwitchedToDraft,
)
from app.search.settings import SearchSettings
from app.search.trace import TraceWriter, read_trace
from app.tui.app import SpecsApp
from app.tui.beam_view import BeamView
from app.tui.compare import ComparePanel
from app.tui.deferrals import DeferralLog
from app.tui.history import History
from app.tui.jobs import REFRESH_HZ, Replay
from app.tui.latency import LATENCY_TICK, LatencyPanel
from app.tui.messages import SearchEnded, SearchEvents
from app.tui.question import QuestionInput
from app.tui.rewards import RewardChart
from app.tui.screens import HelpScreen, MissingModelsScreen
from engines.testing.scripted import ARITHMETIC_QUESTION, scripted_engines

PRESET = "cpu-dev"
# Fixed here rather than read from the catalog, so that tuning a preset does
# not move the snapshots: the defaults of SearchSettings (the paper's beta 10,
# tau_accept 7, tau_switch 0.7) with cpu-dev's step limits.
SETTINGS = SearchSettings(max_steps=12, max_step_tokens=160)
SNAPSHOT_SIZE = (120, 40)


@pytest.fixture(autouse=True)
def builtin_catalog_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's own models.toml must not change what these tests see."""
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "no-user-config.toml"))


def recorded_run(method: str = "specs") -> tuple[list[Event], Finished]:
    """What the scripted search emits for the arithmetic question, outside the app."""
    engines = scripted_engines()
    events: list[Event] = []
    finished = run(method, ARITHMETIC_QUESTION, engines, SETTINGS, emit=events.append, clock=engines.clock)
    return events, finished


def make_app(
    tmp_path: Path | None = None,
    *,
    search: Callable[..., Finished] = run,
    missing: Callable[..., list[Any]] | None = None,
    **kwargs: Any,
) -> SpecsApp:
    engines = scripted_engines()

    @contextmanager
    def factory(preset: Any, catalog: Any, settings: Any):
        yield engines

    kwargs.setdefault("settings", lambda preset: SETTINGS)
    app = SpecsApp(
        load_catalog(),
        preset=PRESET,
        engines_factory=factory,
        missing_models=missing,
        search=search,
        clock=engines.clock,
        history_path=tmp_path / "history.json" if tmp_path else None,
        cursor_blink=False,
        **kwargs,
    )
    app.scripted = engines
    return app


def slowed(delay: float) -> Callable[..., Finished]:
    """The real search, with each event taking `delay` seconds of wall time."""

    def search(*args: Any, emit: Callable[[Event], None], **kwargs: Any) -> Finished:
        def slow_emit(event: Event) -> None:
            emit(event)
            time.sleep(delay)

        return run(*args, emit=slow_emit, **kwargs)

    return search


def flagging_deferrals(flag: threading.Event) -> Callable[..., Finished]:
    """The real search, setting `flag` when it defers a step (before the target writes it)."""

    def search(*args: Any, emit: Callable[[Event], None], **kwargs: Any) -> Finished:
        def tee(event: Event) -> None:
            if isinstance(event, Deferred):
                flag.set()
            emit(event)

        return run(*args, emit=tee, **kwargs)

    return search


async def wait_until(pilot: Any, predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def seconds_to_cancel(pilot: Any, key: str = "escape") -> float:
    """Press `key` during a search; the seconds until the search thread has ended."""
    assert pilot.app.jobs.last_ended is None, "the search ended before the key"
    pressed = time.monotonic()
    await pilot.press(key)
    await wait_until(pilot, lambda: pilot.app.jobs.last_ended is not None, timeout=10)
    return time.monotonic() - pressed


async def ask(pilot: Any, question: str = ARITHMETIC_QUESTION, key: str = "ctrl+s") -> None:
    pilot.app.query_one("#question", QuestionInput).load_text(question)
    await pilot.press(key)


async def solve(pilot: Any, question: str = ARITHMETIC_QUESTION, key: str = "ctrl+s") -> SearchEnded:
    await ask(pilot, question, key)
    await wait_until(pilot, lambda: pilot.app.jobs.last_ended is not None)
    await pilot.pause()
    return pilot.app.jobs.last_ended


def final_fates(events: list[Event]) -> dict[str, str]:
    fates: dict[str, str] = {}
    for event in events:
        if isinstance(event, CandidateFates):
            for cid, fate in event.fates.items():
                if fates.get(cid) not in ("accepted", "completed"):
                    fates[cid] = fate
        elif isinstance(event, StepAccepted):
            fates[event.id] = "accepted"
    return fates


def notes(messages: list[Any]) -> list[Any]:
    return [m.notification for m in messages if isinstance(m, Notify)]


# -- a whole search ------------------------------------------------------------------


async def test_solve_shows_every_candidate_its_fate_and_the_answer(tmp_path: Path) -> None:
    expected, finished = recorded_run()
    messages: list[Any] = []
    app = make_app(tmp_path)
    async with app.run_test(size=SNAPSHOT_SIZE, message_hook=messages.append) as pilot:
        ended = await solve(pilot)

        assert ended.error is None
        assert [o.method for o in ended.outcomes] == ["specs"]
        assert ended.outcomes[0].finished.answer == "42"

        beam = app.query_one(BeamView)
        drafted = {c.id: (e.origin, c.text) for e in expected if isinstance(e, CandidatesDrafted) for c in e.candidates}
        assert {cid: (row.origin, row.text) for cid, row in beam.candidates.items()} == drafted
        assert {cid: row.fate for cid, row in beam.candidates.items()} == final_fates(expected)
        scored = {s.id: (s.reward, s.merit) for e in expected if isinstance(e, CandidatesScored) for s in e.scores}
        assert {cid: (row.reward, row.score) for cid, row in beam.candidates.items() if cid in scored} == scored
        assert not any(row.drafting for row in beam.candidates.values())
        # The accepted path: every accepted step and the completed solution, nothing else.
        path = [e.id for e in expected if isinstance(e, StepAccepted)]
        path += [e.id for e in expected if isinstance(e, CandidateCompleted) and e.answer == "42"][:1]
        assert beam.accepted_path() == path
        assert sorted(beam.steps) == sorted({e.step for e in expected if isinstance(e, CandidatesDrafted)})
        deferred = next(e for e in expected if isinstance(e, Deferred))
        assert beam.steps[deferred.step].origins == ["draft", "target"]

        deferrals = app.query_one(DeferralLog)
        handovers = [e for e in expected if isinstance(e, (Deferred, SwitchedToDraft))]
        assert len(deferrals.entries) == len(handovers) >= 2
        assert (
            f"{deferred.step:>3} → target  best score {deferred.best:.2f} < τ_accept {deferred.threshold.value:.2f}"
            in deferrals.entries
        )

        chart = app.query_one(RewardChart)
        assert (chart.thresholds.reward, chart.thresholds.tilted) == (SETTINGS.tau_switch, SETTINGS.tau_accept)
        accepted = {e.step: e.reward for e in expected if isinstance(e, StepAccepted)}
        assert {step: row.chosen_reward for step, row in chart.steps.items() if step in accepted} == accepted
        last = max(chart.steps)
        assert chart.steps[last].chosen_reward == pytest.approx(0.97)  # chosen by completing

        latency = app.query_one(LatencyPanel)
        assert latency.stats == finished.stats
        assert set(latency.slices()) >= {"draft", "target", "reward"}

        digits = app.query_one("#answer-digits", Digits)
        assert digits.display and digits.value == "42"
        assert str(app.query_one("#answer-stats", Static).render()) == stats_footer(finished.stats)

        batches = [m for m in messages if isinstance(m, SearchEvents)]
        delivered = [e for m in batches for e in m.events]
        assert any(isinstance(e, Deferred) for e in delivered)
        assert [e for e in delivered if not isinstance(e, DraftProgress)] == [
            e for e in expected if not isinstance(e, DraftProgress)
        ]
        assert sum(isinstance(m, SearchEnded) for m in messages) == 1
        assert not app.jobs.running and app.scripted.live == 0

    assert History(tmp_path / "history.json").entries == [ARITHMETIC_QUESTION]


async def test_several_beams_show_parents_pruning_and_the_chain_to_the_answer() -> None:
    def wide(preset: Any) -> SearchSettings:
        return SETTINGS.model_copy(update={"n": 4, "beam_width": 2, "temperature": 1.0})

    engines = scripted_engines()
    expected: list[Event] = []
    settings = wide(None)
    finished = run("beam-draft", ARITHMETIC_QUESTION, engines, settings, emit=expected.append, clock=engines.clock)
    parents = {c.id: c.parent for e in expected if isinstance(e, CandidatesDrafted) for c in e.candidates}
    chosen = next(e.id for e in expected if isinstance(e, CandidateCompleted) and e.answer == finished.answer)
    chain = []
    while chosen:
        chain.append(chosen)
        chosen = parents[chosen]
    pruned = {cid for e in expected if isinstance(e, BeamPruned) for cid in e.pruned}
    assert pruned  # the script makes beam-draft with two beams prune something

    app = make_app(method="beam-draft", settings=wide)
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await solve(pilot)
        beam = app.query_one(BeamView)
        assert sorted(beam.accepted_path()) == sorted(chain)
        assert {cid for cid, row in beam.candidates.items() if row.fate == "pruned"} == pruned
        two_parents = next(cid for cid, row in beam.candidates.items() if len(beam.steps[row.step].parents) > 1)
        assert f"[{parents[two_parents]}]" in str(beam._candidate_nodes[two_parents].label)


async def test_the_cursor_on_a_candidate_shows_its_whole_text() -> None:
    events, _ = recorded_run()
    accepted = next(e for e in events if isinstance(e, StepAccepted) and e.origin == "draft")
    parent = next(
        c.parent for e in events if isinstance(e, CandidatesDrafted) for c in e.candidates if c.id == accepted.id
    )
    app = make_app()
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await solve(pilot)
        detail = app.query_one("#candidate-text", Static)
        assert not detail.display
        beam = app.query_one(BeamView)
        beam.focus()
        beam.move_cursor(beam._candidate_nodes[accepted.id])
        await pilot.pause()
        assert detail.display
        assert str(detail.render()) == f"{accepted.id} (draft, extends {parent}): {accepted.text.strip()}"


async def test_draft_text_streams_into_the_beam_view() -> None:
    events, _ = recorded_run()
    first_progress = next(i for i, e in enumerate(events) if isinstance(e, DraftProgress))
    progress = events[first_progress]
    assert isinstance(progress, DraftProgress)
    app = make_app()
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        app.post_message(SearchEvents(tuple(events[: first_progress + 1])))
        await pilot.pause()
        beam = app.query_one(BeamView)
        for cid, text in zip(progress.ids, progress.texts):
            assert beam.candidates[cid].drafting and beam.candidates[cid].text == text
            assert "…" in str(beam._candidate_nodes[cid].label)

        drafted_at = next(i for i, e in enumerate(events) if isinstance(e, CandidatesDrafted))
        app.post_message(SearchEvents(tuple(events[first_progress + 1 : drafted_at + 1])))
        await pilot.pause()
        final = events[drafted_at]
        assert isinstance(final, CandidatesDrafted)
        for c in final.candidates:
            assert not beam.candidates[c.id].drafting and beam.candidates[c.id].text == c.text


async def test_high_rate_events_reach_the_screen_in_at_most_20_batches_a_second() -> None:
    messages: list[Any] = []
    app = make_app(search=slowed(0.01))
    async with app.run_test(size=SNAPSHOT_SIZE, message_hook=messages.append) as pilot:
        started = time.monotonic()
        await solve(pilot)
        elapsed = time.monotonic() - started
    batches = [m for m in messages if isinstance(m, SearchEvents)]
    delivered = sum(len(m.events) for m in batches)
    assert app.jobs.buffer.received > len(batches)
    assert len(batches) <= elapsed * REFRESH_HZ + 2
    assert delivered <= app.jobs.buffer.received  # progress snapshots coalesce, nothing is invented


# -- bad input and failures -------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   \n  "])
async def test_an_empty_question_is_ignored_with_a_hint(question: str) -> None:
    messages: list[Any] = []
    app = make_app()
    async with app.run_test(size=SNAPSHOT_SIZE, message_hook=messages.append) as pilot:
        await ask(pilot, question)
        await pilot.pause()
        assert not app.jobs.running and not app.workers
        assert [n.title for n in notes(messages)] == ["Empty question"]
        assert "Type a question" in notes(messages)[0].message
        assert "empty" in str(app.query_one("#status", Static).render())


async def test_a_search_error_is_notified_and_the_next_question_works() -> None:
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> Finished:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the model fell over")
        return run(*args, **kwargs)

    messages: list[Any] = []
    app = make_app(search=flaky)
    async with app.run_test(size=SNAPSHOT_SIZE, message_hook=messages.append) as pilot:
        ended = await solve(pilot)
        assert ended.error == "RuntimeError: the model fell over"
        errors = [n for n in notes(messages) if n.severity == "error"]
        assert [n.message for n in errors] == ["RuntimeError: the model fell over"]
        assert not app.jobs.running and not app.query_one("#solve").disabled

        ended = await solve(pilot)
        assert ended.error is None and ended.outcomes[0].finished.answer == "42"
        assert app.query_one("#answer-digits", Digits).value == "42"


async def test_a_method_the_preset_cannot_run_is_refused_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        '[presets.no-draft]\ntarget = "qwen2.5-coder-1.5b-instruct"\nmethod = "beam"\n'
        'reward = { kind = "judge", model = "qwen2.5-coder-1.5b-instruct" }\n'
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(user))
    messages: list[Any] = []
    app = make_app(method="specs")
    app.preset_name = "no-draft"
    async with app.run_test(size=SNAPSHOT_SIZE, message_hook=messages.append) as pilot:
        await ask(pilot)
        await pilot.pause()
        assert not app.jobs.running and not app.workers
        assert "no-draft has no draft model" in notes(messages)[-1].message

        app.query_one("#method", Select).value = "beam"
        await pilot.pause()
        assert app.method == "beam" and app.sub_title == "no-draft · beam"
        ended = await solve(pilot)
        assert ended.outcomes[0].method == "beam" and ended.outcomes[0].finished.answer == "42"


async def test_missing_models_get_a_screen_naming_them_and_the_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The development models are looked for in an empty directory, so the
    # hub's own check finds both of cpu-dev's models missing.
    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(tmp_path))
    app = make_app(missing=tui_command.missing_models)
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        assert "specs-local download cpu-dev" in str(app.query_one("#status", Static).render())
        await ask(pilot)
        await pilot.pause()
        assert isinstance(app.screen, MissingModelsScreen)
        shown = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert "qwen2.5-coder-0.5b-instruct (qwen2.5-coder-0.5b-instruct-q4_k_m.gguf)" in shown
        assert "qwen2.5-coder-1.5b-instruct (qwen2.5-coder-1.5b-instruct-q4_k_m.gguf)" in shown
        assert "specs-local download cpu-dev" in shown
        assert not app.jobs.running and not app.workers

        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, MissingModelsScreen)
        assert app.is_running


async def test_cancel_with_escape_stops_the_search_thread() -> None:
    await _cancel_with("escape")


async def test_cancel_with_ctrl_c_stops_the_search_thread() -> None:
    await _cancel_with("ctrl+c")


async def _cancel_with(key: str) -> None:
    app = make_app(search=slowed(0.05))
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await ask(pilot)
        await wait_until(pilot, lambda: app.query_one(BeamView).steps)
        worker = next(iter(app.workers))
        assert app.check_action("cancel", ()) and not app.query_one("#cancel").disabled
        assert "Cancel search" in [c.title for c in app.get_system_commands(app.screen)]
        await pilot.press(key)
        await wait_until(pilot, lambda: app.jobs.last_ended is not None, timeout=5)
        assert worker.state == WorkerState.CANCELLED
        (outcome,) = app.jobs.last_ended.outcomes
        assert outcome.finished.cancelled
        assert app.scripted.live == 0  # the search released its sequences on the way out
        assert not app.jobs.running and app.query_one("#cancel").disabled
        assert "cancelled" in str(app.query_one("#answer-stats", Static).render())


async def test_escape_during_a_deferral_stops_within_a_second_and_keeps_the_steps_before_it() -> None:
    # The deferred step is the target writing a step itself, the longest model call
    # of a SPECS step; from the deferral on, each of its tokens takes 0.2 s of wall
    # time, so it would run for seconds if the stop did not reach inside it.
    events, _ = recorded_run()
    deferral = next(i for i, e in enumerate(events) if isinstance(e, Deferred))
    kept = [e.text for e in events[:deferral] if isinstance(e, StepAccepted)]
    in_deferral = threading.Event()
    app = make_app(search=flagging_deferrals(in_deferral))
    target = app.scripted.target
    spend = target._spend

    def slow_in_the_deferral(seconds: float) -> None:
        spend(seconds)
        if in_deferral.is_set():
            time.sleep(0.2)

    target._spend = slow_in_the_deferral
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        deferrals = app.query_one(DeferralLog)
        await ask(pilot)
        await wait_until(pilot, lambda: any("→ target" in entry for entry in deferrals.entries))
        await pilot.pause(0.3)  # into the target's step
        stopped_after = await seconds_to_cancel(pilot)
        assert stopped_after < 1.0, f"stopped {stopped_after:.2f} s after Esc"
        print(f"stopped {stopped_after:.3f} s after Esc")
        (outcome,) = app.jobs.last_ended.outcomes
        assert outcome.finished.cancelled and outcome.finished.answer is None
        assert kept and all(text in outcome.finished.solution for text in kept)  # the steps before it
        assert app.scripted.live == 0
        assert any("→ target" in entry for entry in deferrals.entries)  # the log still says why
        assert "cancelled" in str(app.query_one("#answer-stats", Static).render())

        in_deferral.clear()  # the next question runs at full speed, to its answer
        target._spend = spend
        ended = await solve(pilot)
        (outcome,) = ended.outcomes
        assert not outcome.finished.cancelled and outcome.finished.answer == "42"


async def test_quitting_mid_search_lets_the_thread_finish_before_the_models_close() -> None:
    engines = scripted_engines()
    live_at_close: list[int] = []

    @contextmanager
    def factory(preset: Any, catalog: Any, settings: Any):
        yield engines
        live_at_close.append(engines.live)  # what the models still held when closed

    app = SpecsApp(
        load_catalog(),
        preset=PRESET,
        engines_factory=factory,
        search=slowed(0.05),
        clock=engines.clock,
        cursor_blink=False,
    )
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await ask(pilot)
        await wait_until(pilot, lambda: app.query_one(BeamView).steps)
        await pilot.press("ctrl+q")
    closer = threading.Thread(target=app.engines.close)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive()
    assert live_at_close == [0]


# -- keys, history, compare, palette ------------------------------------------------------------


async def test_up_and_down_recall_past_questions(tmp_path: Path) -> None:
    history = History(tmp_path / "history.json")
    for q in ("What is 1 + 1?", "What is 2 + 2?"):
        history.add(q)
    app = make_app(tmp_path)
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        box = app.query_one("#question", QuestionInput)
        box.focus()
        seen = []
        for key in ("up", "up", "up", "down", "down"):
            await pilot.press(key)
            seen.append(box.text)
        assert seen == ["What is 2 + 2?", "What is 1 + 1?", "What is 1 + 1?", "What is 2 + 2?", ""]


async def test_compare_runs_specs_then_beam_and_shows_the_ratio() -> None:
    _, specs = recorded_run("specs")
    _, beam = recorded_run("beam")
    app = make_app()
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        ended = await solve(pilot, key="ctrl+b")
        assert [o.method for o in ended.outcomes] == ["specs", "beam"]
        panel = app.query_one(ComparePanel)
        assert panel.display and [o.method for o in panel.outcomes] == ["specs", "beam"]
        assert [o.finished.stats.wall_seconds for o in panel.outcomes] == pytest.approx(
            [specs.stats.wall_seconds, beam.stats.wall_seconds]
        )
        a, b = specs.stats.wall_seconds, beam.stats.wall_seconds
        verdict = f"{b / a:.1f}x faster" if b >= a else f"{a / b:.1f}x slower"
        assert panel.summary == f"SPECS {verdict} than beam search (target) ({a:.1f} s vs {b:.1f} s)"


async def test_copy_key_puts_the_answer_on_the_clipboard() -> None:
    app = make_app()
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await pilot.press("ctrl+o")  # nothing to copy yet: a hint, not a crash
        assert app.clipboard == ""
        await solve(pilot)
        await pilot.press("ctrl+o")
        assert app.clipboard == "42"


async def test_help_opens_with_f1_and_the_palette_lists_the_actions() -> None:
    app = make_app()
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        # "?" types into the question box, and opens the help anywhere else.
        await pilot.press("question_mark")
        assert app.query_one("#question", QuestionInput).text == "?"
        app.set_focus(None)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()

        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Solve", "Compare SPECS with beam search", "Copy answer", "Help"):
            assert title in titles
        assert "Cancel search" not in titles  # only while a search runs

        app.query_one("#question", QuestionInput).load_text(ARITHMETIC_QUESTION)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Compare SPECS")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.jobs.last_ended is not None)
        assert [o.method for o in app.jobs.last_ended.outcomes] == ["specs", "beam"]


async def test_a_small_terminal_degrades_the_layout_without_errors() -> None:
    app = make_app()
    async with app.run_test(size=(40, 12)) as pilot:
        ended = await solve(pilot)
        assert ended.outcomes[0].finished.answer == "42"
        assert app.screen.has_class("-narrow") and app.screen.has_class("-short")
        assert not app.query_one("#side").display
        assert app.query_one(BeamView).candidates
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert app.screen.has_class("-wide") and app.query_one("#side").display


# -- replay -----------------------------------------------------------------------------------


async def test_replay_plays_a_recorded_trace_in_the_same_screens(tmp_path: Path) -> None:
    engines = scripted_engines()
    path = tmp_path / "run.jsonl"
    with TraceWriter(path) as writer:
        finished = run("specs", ARITHMETIC_QUESTION, engines, SETTINGS, emit=writer, clock=engines.clock)
    events = list(read_trace(path))

    live = make_app()
    async with live.run_test(size=SNAPSHOT_SIZE) as pilot:
        await solve(pilot)
        live_rows = {cid: (r.fate, r.reward) for cid, r in live.query_one(BeamView).candidates.items()}

    app = SpecsApp(load_catalog(), replay=Replay(events, speed=1000.0, name=path.name), cursor_blink=False)
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await wait_until(pilot, lambda: app.jobs.last_ended is not None)
        await pilot.pause()
        assert app.jobs.last_ended.error is None
        assert {cid: (r.fate, r.reward) for cid, r in app.query_one(BeamView).candidates.items()} == live_rows
        assert app.query_one("#answer-digits", Digits).value == finished.answer == "42"
        box = app.query_one("#question", QuestionInput)
        assert box.text == ARITHMETIC_QUESTION and box.read_only
        await pilot.press("ctrl+s")  # a replay has no models: solving is off
        await pilot.pause()
        assert app.query_one("#solve").disabled and not app.jobs.running
        assert app.sub_title == "run.jsonl (replay)"


async def test_replay_keeps_the_pace_of_the_timestamps() -> None:
    events, _finished = recorded_run()
    speed = 2.0
    app = SpecsApp(load_catalog(), replay=Replay(events, speed=speed), cursor_blink=False)
    # Time the hand-over itself, in the replay thread: when the UI thread notices
    # an event depends on how busy the machine is (seen: 0.6 s late in a full
    # suite run), the pace at which the replay emits does not.
    emitted: list[float] = []
    emit = app.jobs.buffer.emit

    def timed_emit(event: Any) -> None:
        emitted.append(time.monotonic())
        emit(event)

    app.jobs.buffer.emit = timed_emit  # type: ignore[method-assign]
    async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
        await wait_until(pilot, lambda: app.jobs.last_ended is not None)
    assert app.jobs.buffer.received == len(emitted) == len(events)
    took = emitted[-1] - emitted[0]
    expected = (events[-1].t - events[0].t) / speed
    # Unpaced, it would take a few milliseconds. Never early; late by at most
    # what a busy machine adds to the thread's sleeps.
    assert expected > 1.0
    assert expected - 0.01 <= took <= expected + 2.0
    for event, at in zip(events, emitted, strict=True):
        assert at - emitted[0] >= (event.t - events[0].t) / speed - 0.01


# -- snapshots --------------------------------------------------------------------------------


def test_snapshot_mid_search(snap_compare: Any) -> None:
    """Gated right after the deferral, while the target drafts the step."""
    events, _ = recorded_run()
    stop_at = next(i for i, e in enumerate(events) if isinstance(e, Deferred)) + 3
    gate = threading.Event()

    def gated(*args: Any, emit: Callable[[Event], None], should_stop: Callable[[], bool], **kwargs: Any) -> Finished:
        count = 0

        def emit_until_gate(event: Event) -> None:
            nonlocal count
            emit(event)
            count += 1
            if count == stop_at:
                # Holds the search still for the picture; the app's exit cancels it.
                while not gate.wait(0.02) and not should_stop():
                    pass

        return run(*args, emit=emit_until_gate, should_stop=should_stop, **kwargs)

    app = make_app(search=gated)

    async def run_before(pilot: Any) -> None:
        await ask(pilot)
        await wait_until(pilot, lambda: app.jobs.buffer.received >= stop_at)
        await pilot.pause(LATENCY_TICK + 3 / REFRESH_HZ)
        app.set_focus(None)

    try:
        assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=run_before)
    finally:
        gate.set()


def test_snapshot_finished(snap_compare: Any) -> None:
    app = make_app()

    async def run_before(pilot: Any) -> None:
        await solve(pilot)
        app.set_focus(None)

    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=run_before)


def test_snapshot_compare(snap_compare: Any) -> None:
    app = make_app()

    async def run_before(pilot: Any) -> None:
        await solve(pilot, key="ctrl+b")
        app.set_focus(None)

    assert snap_compare(app, terminal_size=SNAPSHOT_SIZE, run_before=run_before)


# -- real llama.cpp ----------------------------------------------------------------------------


async def test_live_search_on_tiny_gguf_models(tiny_qwen: Path) -> None:
    """The whole path on real llama.cpp: a thread worker, tiny random-weight
    models as draft, target and judge, the beam view fed by their events."""
    from app.search.types import Engines
    from engines.llama import LlamaModel
    from engines.reward import build_reward

    recorded: list[Event] = []

    def recording(*args: Any, emit: Callable[[Event], None], **kwargs: Any) -> Finished:
        def tee(event: Event) -> None:
            recorded.append(event)
            emit(event)

        return run(*args, emit=tee, **kwargs)

    @contextmanager
    def tiny_engines(preset: Any, catalog: Any, settings: Any):
        with (
            LlamaModel(tiny_qwen, name="tiny-target", n_ctx=1024, n_seq_max=32, flash_attn="off") as target,
            LlamaModel(tiny_qwen, name="tiny-draft", n_ctx=1024, n_seq_max=32, flash_attn="off") as draft,
        ):
            yield Engines(target=target, reward=build_reward("judge", target), draft=draft)

    app = SpecsApp(
        load_catalog(),
        preset=PRESET,
        method="specs",
        engines_factory=tiny_engines,
        search=recording,
        settings=lambda preset: preset.settings(n=2, max_steps=3, max_step_tokens=8),
        cursor_blink=False,
    )
    try:
        async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
            ended = await solve(pilot)
            assert ended.error is None, ended.error
            (outcome,) = ended.outcomes
            stats = outcome.finished.stats
            assert stats.steps >= 1 and stats.models["target"].seconds > 0
            beam = app.query_one(BeamView)
            drafted = {c.id: c.text for e in recorded if isinstance(e, CandidatesDrafted) for c in e.candidates}
            assert drafted and {cid: row.text for cid, row in beam.candidates.items()} == drafted
            scored = [s for e in recorded if isinstance(e, CandidatesScored) for s in e.scores]
            assert scored and all(0.0 <= s.reward <= 1.0 for s in scored)
            assert app.query_one(LatencyPanel).stats == stats
            handovers = [e for e in recorded if isinstance(e, (Deferred, SwitchedToDraft))]
            assert len(app.query_one(DeferralLog).entries) == len(handovers)
    finally:
        app.engines.close()


@pytest.mark.real
async def test_escape_during_a_deferral_on_the_development_models(
    dev_model_small: Path, dev_model_large: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on cpu-dev's real models: after the target's first step SPECS always
    switches to the draft (tau_switch 0), and a tau_accept no draft can reach makes
    that step a deferral; Esc while the 1.5B writes it."""
    from app.commands.common import RuntimeOptions

    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(dev_model_large.parent))
    in_deferral = threading.Event()
    catalog = load_catalog()
    app = SpecsApp(
        catalog,
        preset="cpu-dev",
        engines_factory=tui_command.local_engines(RuntimeOptions(None, None)),
        search=flagging_deferrals(in_deferral),
        settings=lambda preset: preset.settings(tau_accept=100.0, tau_switch=0.0, max_steps=4, seed=0),
        cursor_blink=False,
    )
    try:
        async with app.run_test(size=SNAPSHOT_SIZE) as pilot:
            await ask(pilot, "What is 12 + 30?")
            await wait_until(pilot, in_deferral.is_set, timeout=240)
            await pilot.pause(0.5)  # the target is writing the deferred step
            stopped_after = await seconds_to_cancel(pilot)
            # One second is the target; the margin is for a loaded CI machine.
            assert stopped_after < 1.5, f"stopped {stopped_after:.2f} s after Esc"
            (outcome,) = app.jobs.last_ended.outcomes
            assert outcome.finished.cancelled and outcome.finished.stats.steps >= 1  # the target's first step
            assert outcome.finished.solution.strip()
            assert any("→ target" in entry for entry in app.query_one(DeferralLog).entries)
            print(f"stopped {stopped_after:.3f} s after Esc")
    finally:
        if app.engines is not None:
            app.engines.close()
