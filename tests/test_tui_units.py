"""The TUI's plain parts: formatting, history, the event hand-over, replay pacing, CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from textual.app import App

from app.cli import main
from app.config import Catalog, Preset, load_catalog
from app.errors import UserError
from app.render import is_number, one_line, speedup, stats_footer, tokens_per_second, unboxed_answer
from app.search.events import (
    Deferred,
    DraftProgress,
    Finished,
    ModelStats,
    SearchStarted,
    Stats,
    StepStarted,
    SwitchedToDraft,
)
from app.search.methods import REGISTRY, RSD_DELTA, TAU_ACCEPT, TAU_SWITCH, draftless_methods
from app.search.settings import SearchSettings
from app.search.trace import write_trace
from app.tui.beam_view import CandidateRow, candidate_label
from app.tui.deferrals import deferral_line
from app.tui.history import MAX_ENTRIES, History
from app.tui.jobs import Job, JobControl, ModelsMissing, Refused, ended_line
from app.tui.latency import stacked_bar
from app.tui.logfile import divert_logging
from app.tui.messages import RunOutcome, SearchEnded
from app.tui.pump import EventBuffer, play
from app.tui.rewards import chart_thresholds, track

ROOT = Path(__file__).resolve().parents[1]


def paper_stats() -> Stats:
    return Stats(
        wall_seconds=12.3,
        models={
            "draft": ModelStats(seconds=4.1, generated=700),
            "target": ModelStats(seconds=6.0, generated=346),
            "reward": ModelStats(seconds=1.9, prefilled=900),
        },
        steps=6,
        draft_steps=4,
        target_steps=2,
        deferrals=2,
    )


# -- render.py ---------------------------------------------------------------------------


def test_stats_footer_has_the_solve_format() -> None:
    assert stats_footer(paper_stats()) == (
        "latency 12.3 s · draft 4.1 s · target 6.0 s · reward 1.9 s · 85 tok/s · acceptance 67% (4/6) · deferrals 2"
    )


def test_stats_footer_leaves_out_a_draft_that_did_no_work() -> None:
    stats = Stats(
        wall_seconds=2.0,
        models={
            "draft": ModelStats(),
            "target": ModelStats(seconds=1.5, generated=100),
            "reward": ModelStats(seconds=0.4),
        },
        steps=3,
        target_steps=3,
    )
    assert stats_footer(stats) == "latency 2.0 s · target 1.5 s · reward 0.4 s · 50 tok/s"


def test_tokens_per_second_counts_policy_tokens_and_survives_zero_time() -> None:
    assert tokens_per_second(paper_stats()) == pytest.approx(1046 / 12.3)
    assert tokens_per_second(Stats()) == 0.0


@pytest.mark.parametrize(
    ("fast", "slow", "said"),
    [(2.0, 5.0, "2.5x faster"), (4.0, 2.0, "2.0x slower"), (0.0, 1.0, "no ratio (a run took no time)")],
)
def test_speedup(fast: float, slow: float, said: str) -> None:
    assert speedup(fast, slow) == said


@pytest.mark.parametrize(
    ("answer", "numeric"),
    [("42", True), (" -3.5 ", True), ("1,000", True), ("\\frac{1}{2}", False), ("x = 2", False), ("", False)],
)
def test_is_number(answer: str, numeric: bool) -> None:
    assert is_number(answer) is numeric


def test_an_unboxed_answer_shows_where_the_solution_stopped() -> None:
    said = unboxed_answer("Let's break it down:\n\n12 + 30 = 42\n\nSo, 12 + 30 = 42.\n\n")
    assert said == "no \\boxed{} answer; the solution ends: So, 12 + 30 = 42."
    assert unboxed_answer("  \n") == "no \\boxed{} answer (the solution is empty)"


def test_one_line_flattens_and_cuts() -> None:
    assert one_line("a\n\nb  c", 10) == "a b c"
    assert one_line("abcdefghij", 5) == "abcd…"


# -- widgets' pure helpers -------------------------------------------------------------------


def test_a_doubted_result_is_shown_before_the_step_text() -> None:
    row = CandidateRow(id="4.1", step=4, origin="draft", text="160 + 80 + 20 = 360", reward=0.04, drafting=False)
    assert "=?" not in candidate_label(row).plain
    row.doubted_result = 0.012
    assert "=?0.01 160 + 80 + 20 = 360" in candidate_label(row).plain


def test_thresholds_follow_the_method() -> None:
    settings = {"tau_switch": 0.7, "tau_accept": 7.0, "rsd_delta": 0.6}
    specs = chart_thresholds(REGISTRY["specs"].thresholds_in(settings))
    assert (specs.reward, specs.tilted) == (0.7, 7.0)
    rsd = chart_thresholds(REGISTRY["rsd"].thresholds_in(settings))
    assert (rsd.reward, rsd.tilted, rsd.reward_name) == (0.6, None, "δ")
    assert chart_thresholds(REGISTRY["beam"].thresholds_in(settings)).reward is None


def test_track_draws_spread_threshold_and_choice() -> None:
    line = track(11, 0.0, 1.0, [0.2, 0.6], 0.6, 0.9, "bold").plain
    assert line == "··━━━━●··┊·"


def test_stacked_bar_fills_the_width_in_proportion() -> None:
    bar = stacked_bar(20, {"draft": 1.0, "target": 3.0, "reward": 0.01})
    assert len(bar.plain) == 20
    spans = [(span.end - span.start, span.style) for span in bar.spans]
    assert spans == [(5, "cyan"), (14, "magenta"), (1, "yellow")]


def test_deferral_lines_give_the_comparison() -> None:
    deferred = Deferred(t=0, step=3, best=5.31, threshold=TAU_ACCEPT.at(7.0), drafts=4, doubted=0)
    by_reward = Deferred(t=0, step=3, best=5.31, threshold=RSD_DELTA.at(7.0), drafts=1, doubted=0)
    switched = SwitchedToDraft(t=0, step=4, reward=0.84, threshold=TAU_SWITCH.at(0.7))
    assert deferral_line(deferred).plain == "  3 → target  best score 5.31 < τ_accept 7.00"
    assert deferral_line(by_reward).plain == "  3 → target  best reward 5.31 < δ 7.00"
    assert deferral_line(switched).plain == "  4 → draft   reward 0.84 ≥ τ_switch 0.70"


# -- history ---------------------------------------------------------------------------------


def test_history_persists_dedupes_and_walks(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "history.json"
    history = History(path)
    for q in ("a", "b", "a", "  ", "c"):
        history.add(q)
    assert history.entries == ["b", "a", "c"]
    again = History(path)
    assert again.entries == ["b", "a", "c"]
    assert [again.previous(), again.previous(), again.previous(), again.previous()] == ["c", "a", "b", None]
    assert [again.next(), again.next(), again.next(), again.next()] == ["a", "c", "", None]


def test_history_is_capped(tmp_path: Path) -> None:
    history = History(tmp_path / "h.json")
    for i in range(MAX_ENTRIES + 5):
        history.add(f"q{i}")
    assert len(History(tmp_path / "h.json").entries) == MAX_ENTRIES


def test_a_damaged_history_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text("{not json")
    assert History(path).entries == []
    path.write_text(json.dumps({"a": 1}))
    assert History(path).entries == []


# -- the hand-over between threads ---------------------------------------------------------------


def progress(step: int, text: str, t: float = 0.0) -> DraftProgress:
    return DraftProgress(t=t, step=step, origin="draft", ids=(f"{step}.1",), texts=(text,))


def test_buffer_coalesces_progress_but_keeps_everything_else_in_order() -> None:
    buffer = EventBuffer()
    started = StepStarted(t=0, step=1, origin="draft", parents=("",))
    for event in (
        started,
        progress(1, "a"),
        progress(1, "ab"),
        progress(1, "abc"),
        StepStarted(t=1, step=2, origin="draft", parents=("1.1",)),
        progress(2, "x"),
        progress(2, "xy"),
    ):
        buffer.emit(event)
    events, result = buffer.drain()
    assert result is None
    assert [(type(e).__name__, getattr(e, "texts", None)) for e in events] == [
        ("StepStarted", None),
        ("DraftProgress", ("abc",)),
        ("StepStarted", None),
        ("DraftProgress", ("xy",)),
    ]
    assert buffer.received == 7
    assert buffer.drain() == ([], None)


def test_buffer_tells_when_only_streamed_text_waits() -> None:
    buffer = EventBuffer()
    assert not buffer.only_progress()  # nothing waits
    buffer.emit(progress(1, "a"))
    assert buffer.only_progress()
    buffer.emit(StepStarted(t=0, step=2, origin="draft", parents=()))
    assert not buffer.only_progress()
    buffer.drain()
    buffer.emit(progress(2, "b"))
    buffer.finish("done")
    assert not buffer.only_progress()  # the end must not wait


def test_buffer_hands_the_result_over_after_the_last_events() -> None:
    buffer = EventBuffer()
    buffer.emit(progress(1, "a"))
    buffer.finish("done")
    assert buffer.drain() == ([progress(1, "a")], "done")
    assert buffer.drain() == ([], None)


def test_buffer_survives_concurrent_producers_and_a_draining_consumer() -> None:
    buffer = EventBuffer()
    seen: list[object] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            seen.extend(buffer.drain()[0])

    def produce(step: int) -> None:
        for i in range(2000):
            buffer.emit(StepStarted(t=i, step=step, origin="draft", parents=()))

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(s,)) for s in range(3)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    consumer.join()
    seen.extend(buffer.drain()[0])
    assert len(seen) == 6000
    for step in range(3):
        assert [e.t for e in seen if e.step == step] == list(range(2000))


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_play_spaces_events_by_their_timestamps() -> None:
    events = [StepStarted(t=t, step=i, origin="draft", parents=()) for i, t in enumerate((5.0, 5.0, 6.0, 9.0))]
    fake = FakeTime()
    emitted: list[tuple[float, int]] = []
    count = play(
        events, 2.0, lambda e: emitted.append((fake.now, e.step)), lambda: False, clock=fake.clock, sleep=fake.sleep
    )
    assert count == 4
    assert [(round(t - 100.0, 6), step) for t, step in emitted] == [(0.0, 0), (0.0, 1), (0.5, 2), (2.0, 3)]
    assert max(fake.slept) <= 0.1  # short slices, so a cancel is seen quickly


def test_play_stops_when_asked() -> None:
    events = [StepStarted(t=float(i), step=i, origin="draft", parents=()) for i in range(10)]
    fake = FakeTime()
    emitted: list[int] = []
    count = play(
        events, 1.0, lambda e: emitted.append(e.step), lambda: len(emitted) >= 3, clock=fake.clock, sleep=fake.sleep
    )
    assert count == 3 == len(emitted)
    with pytest.raises(ValueError):
        play(events, 0.0, lambda e: None, lambda: False)


# -- planning and ending a job --------------------------------------------------------------------


def job_control(catalog: Catalog, **kwargs: Any) -> JobControl:
    options: dict[str, Any] = {
        "engines": None,
        "search": lambda *args, **kw: None,
        "settings": lambda preset: preset.settings(),
        "missing_models": lambda preset, catalog: [],
        "clock": lambda: 0.0,
        "log_path": None,
    }
    return JobControl(App(), catalog, **(options | kwargs))


def test_a_job_that_cannot_run_is_refused_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        '[presets.no-draft]\ntarget = "qwen2.5-coder-1.5b-instruct"\nmethod = "beam"\n'
        'reward = { kind = "judge", model = "qwen2.5-coder-1.5b-instruct" }\n'
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(user))
    catalog = load_catalog()

    with pytest.raises(Refused) as refused:
        job_control(catalog).plan("q", "no-draft", ("beam", "specs"))
    said = str(refused.value)
    assert said == f"The preset no-draft has no draft model; choose {draftless_methods()}, or another preset."
    assert all(name in said for name, spec in REGISTRY.items() if not spec.needs_draft)
    assert refused.value.severity == "warning"

    def bad_flag(preset: Preset) -> SearchSettings:
        raise UserError("--n must be at least 1.")

    with pytest.raises(Refused) as refused:
        job_control(catalog, settings=bad_flag).plan("q", "cpu-dev", ("specs",))
    assert (str(refused.value), refused.value.title, refused.value.severity) == (
        "--n must be at least 1.",
        "Settings",
        "error",
    )

    missing = job_control(catalog, missing_models=lambda preset, catalog: [catalog.model(preset.target)])
    with pytest.raises(ModelsMissing) as absent:
        missing.plan("q", "no-draft", ("beam",))
    assert (absent.value.preset, absent.value.names) == (
        "no-draft",
        ["qwen2.5-coder-1.5b-instruct (qwen2.5-coder-1.5b-instruct-q4_k_m.gguf)"],
    )

    control = job_control(catalog)
    first, second = control.plan("q", "no-draft", ("greedy",)), control.plan("q", "cpu-dev", ("specs", "beam"))
    assert (first.id, first.preset.name, first.methods) == (1, "no-draft", ("greedy",))
    assert (second.id, second.methods) == (2, ("specs", "beam"))


def test_the_status_line_says_how_a_job_ended() -> None:
    job = Job(1, "q", Preset.model_construct(name="p"), ("specs", "beam"), SearchSettings())
    done = RunOutcome("specs", Finished(t=1, answer="42", solution="", stats=Stats()))
    stopped = RunOutcome("beam", Finished(t=2, answer=None, solution="", stats=Stats(), cancelled=True))
    assert ended_line(SearchEnded(1, [done, done], None), job).startswith("Done.")
    assert ended_line(SearchEnded(1, [done, stopped], None), job) == "Cancelled; the best answer so far is shown."
    assert ended_line(SearchEnded(1, [done], None), job) == "Cancelled."  # the second method never began
    assert ended_line(SearchEnded(1, [], "boom"), job) == "Search failed: boom  Fix it, or try another question."
    assert ended_line(SearchEnded(0, [], None), None) == "Replay finished."


# -- the replay command's refusals -----------------------------------------------------------------


def test_replay_refuses_a_file_that_is_not_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "Nonsense", "t": 0}\n')
    assert main(["replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a specs-local event" in err and "solve --trace" in err
    assert err.count("\n") == 1


def test_replay_refuses_an_empty_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    write_trace(empty, [])
    assert main(["replay", str(empty)]) == 2
    assert "holds no events" in capsys.readouterr().err


def test_replay_refuses_a_missing_file_and_a_bad_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    trace = tmp_path / "t.jsonl"
    write_trace(
        trace,
        [
            SearchStarted(t=0, method="specs", question="q", settings={}, models={}),
            Finished(t=1, answer="1", solution="", stats=Stats()),
        ],
    )
    assert main(["replay", str(trace), "--speed", "0"]) == 2
    assert "--speed" in capsys.readouterr().err


def test_tui_refuses_a_bad_search_flag_before_opening(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(tmp_path / "none.toml"))
    assert main(["tui", "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err
    assert main(["tui", "--preset", "nope"]) == 2
    assert "Unknown preset 'nope'" in capsys.readouterr().err


# -- import hygiene --------------------------------------------------------------------------------


def test_render_never_imports_textual() -> None:
    """`solve` formats its stats line with app.render and must not pay for Textual."""
    code = "import sys, app.render; print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_logging_goes_to_a_file_while_the_app_runs(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    path = tmp_path / "logs" / "tui.log"
    with divert_logging(path):
        logging.getLogger("app.tui.app").error("search failed")
    assert root.handlers == before
    assert "ERROR app.tui.app: search failed" in path.read_text()


def _cut_trace(tmp_path: Path, cut: int | None) -> Path:
    """A trace of two events whose last line lost its end (a crash mid-write): all but `cut`
    bytes of it, or, with None, up to the middle of its two-byte character."""
    trace = tmp_path / "cut.jsonl"
    write_trace(
        trace,
        [
            SearchStarted(t=0, method="specs", question="q", settings={}, models={}),
            Finished(t=1, answer="Ü", solution="", stats=Stats()),
        ],
    )
    data = trace.read_bytes()
    end = data.index("Ü".encode()) + 1 if cut is None else len(data) - 1 - cut  # the newline goes in any case
    trace.write_bytes(data[:end])
    return trace


@pytest.mark.parametrize("cut", [1, 40, None])
def test_replay_plays_the_whole_events_of_a_trace_whose_last_line_was_cut(tmp_path: Path, cut: int | None) -> None:
    from app.commands.replay import cut_note, load_events

    trace = _cut_trace(tmp_path, cut)
    loaded = load_events(trace)
    assert [type(e) for e in loaded.events] == [SearchStarted] and loaded.cut_line == 2
    assert cut_note(trace, loaded) == (
        "line 2 of cut.jsonl was cut short (the search that wrote it stopped mid-line); the 1 whole events before it"
        " are played"
    )


def test_a_trace_with_a_whole_last_line_without_its_newline_is_whole(tmp_path: Path) -> None:
    from app.commands.replay import load_events

    trace = _cut_trace(tmp_path, 0)
    loaded = load_events(trace)
    assert [type(e) for e in loaded.events] == [SearchStarted, Finished] and loaded.cut_line is None


def test_a_bad_line_before_the_last_is_still_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _cut_trace(tmp_path, 1)
    trace.write_bytes(b'{"event": "Nonsense"}\n' + trace.read_bytes())
    assert main(["replay", str(trace)]) == 2
    err = capsys.readouterr().err
    assert f"error: {trace}:1: not a specs-local event" in err and err.count("\n") == 1


def test_a_trace_of_only_a_cut_line_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "cut.jsonl"
    trace.write_bytes(b'{"event": "SearchStarted", "t": 0, "meth')
    assert main(["replay", str(trace)]) == 2
    assert "holds only a cut line" in capsys.readouterr().err


def test_a_false_equation_is_marked_before_the_step_text() -> None:
    row = CandidateRow(id="2.3", step=2, origin="draft", text="5 + 7 + 14 = 36", reward=0.0, drafting=False)
    assert "=✗" not in candidate_label(row).plain
    row.false_equation = "5 + 7 + 14 = 36 (it is 26)"
    assert "=✗ 5 + 7 + 14 = 36" in candidate_label(row).plain
