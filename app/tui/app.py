"""The specs-local terminal app: ask a question, watch SPECS search.

Threads and the UI meet in one place: the search (or a replayed trace) runs in
a thread worker and hands events to an `EventBuffer`; a 10 Hz timer on the UI
thread drains it and posts one `SearchEvents` message per batch, which the
widgets apply inside a single batch update. The search thread never touches a
widget, and its `emit` is an append under a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Footer, Header, Select, Static, Tree
from textual.worker import get_current_worker

from app.config import Catalog, ConfigError, Preset
from app.errors import UserError
from app.render import one_line
from app.search import run
from app.search.events import DraftProgress, Event, Finished, SearchStarted, StepStarted
from app.search.methods import needs_draft
from app.search.settings import METHODS, SearchSettings
from app.tui.answer import AnswerPanel
from app.tui.beam_view import COLUMNS, FATE_LEGEND, BeamView
from app.tui.compare import ComparePanel
from app.tui.deferrals import DeferralLog
from app.tui.engines import EngineCache, EnginesFactory
from app.tui.history import History
from app.tui.latency import LatencyPanel
from app.tui.messages import RunOutcome, SearchEnded, SearchEvents, StatusChanged
from app.tui.pump import EventBuffer, play
from app.tui.question import QuestionInput
from app.tui.rewards import RewardChart
from app.tui.screens import HelpScreen, MissingModelsScreen
from engines.base import EngineError

log = logging.getLogger(__name__)

# Screen updates per second at most: smooth enough for streaming text, and each
# update costs the search thread a few milliseconds of the GIL.
REFRESH_HZ = 10
# Streamed draft text alone repaints at most this often; decisions (scores,
# fates, deferrals) still show within 1 / REFRESH_HZ.
PROGRESS_HZ = 5
LATENCY_TICK = 0.5
COMPARE_METHODS = ("specs", "beam")
NEEDS_DRAFT = tuple(m for m in METHODS if needs_draft(m))

SearchFn = Callable[..., Finished]
MissingModelsFn = Callable[[Preset, Catalog], Sequence[object]]
SettingsFn = Callable[[Preset], SearchSettings]


@dataclass
class Job:
    id: int
    question: str
    preset: Preset
    methods: tuple[str, ...]
    settings: SearchSettings


@dataclass
class Replay:
    """A recorded trace to play instead of searching."""

    events: list[Event]
    speed: float = 1.0
    name: str = "trace"
    note: str | None = None  # what the status line adds, e.g. that the trace's last line was cut


def _describe_model(item: object) -> str:
    """A catalog entry as `name (file)`; anything else as its text."""
    name, file = getattr(item, "name", None), getattr(item, "file", None)
    if name and file:
        return f"{name} ({file})"
    return str(name or item)


class SpecsApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "specs-local"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (72, "-medium"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]

    BINDINGS = [
        Binding("ctrl+s", "solve", "Solve"),
        Binding("ctrl+b", "compare", "Compare"),
        # Priority, so they win over the question box's own ctrl+c (copy);
        # `check_action` lets the key fall through when nothing runs.
        Binding("escape", "cancel", "Cancel", priority=True),
        Binding("ctrl+c", "cancel", "Cancel", show=False, priority=True),
        Binding("ctrl+o", "copy_answer", "Copy answer"),
        Binding("f1", "help", "Help"),
        Binding("question_mark", "help", "Help", show=False),
    ]

    def __init__(
        self,
        catalog: Catalog,
        *,
        preset: str | None = None,
        method: str | None = None,
        engines_factory: EnginesFactory | None = None,
        missing_models: MissingModelsFn | None = None,
        settings: SettingsFn | None = None,
        search: SearchFn = run,
        history_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        replay: Replay | None = None,
        cursor_blink: bool = True,
        log_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.catalog = catalog
        self.preset_name = catalog.preset(preset).name
        self.method = method or catalog.preset(preset).method
        if self.method not in METHODS:
            raise UserError(f"Unknown method {self.method!r}; choose one of: {', '.join(METHODS)}.")
        # Without a factory the app is a viewer (replay): it never searches.
        self.engines = EngineCache(engines_factory) if engines_factory else None
        self._missing_models = missing_models or (lambda preset, catalog: [])
        self._settings = settings or (lambda preset: preset.settings())
        self._search_fn = search
        self._clock = clock
        self.history = History(history_path)
        self.replay = replay
        self._cursor_blink = cursor_blink
        self._log_path = log_path
        self.buffer = EventBuffer()
        self.running = False
        self.current_job: Job | None = None
        self._job_ids = 0
        self._method_running = ""
        self._pull_timer: Timer | None = None
        self._latency_painted = 0.0
        self._last_batch = 0.0
        self._latency_stale = False
        self.last_ended: SearchEnded | None = None
        self._views: tuple[BeamView, RewardChart, DeferralLog, LatencyPanel] | tuple[()] = ()

    # -- layout --------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="controls"):
            yield QuestionInput(self.history, blink=self._cursor_blink, id="question")
            with Horizontal(id="options"):
                yield Select(
                    [(name, name) for name in self.catalog.presets],
                    value=self.preset_name,
                    allow_blank=False,
                    compact=True,
                    id="preset",
                )
                yield Select([(m, m) for m in METHODS], value=self.method, allow_blank=False, compact=True, id="method")
                yield Button("Solve", id="solve", variant="primary")
                yield Button("Compare", id="compare")
                yield Button("Cancel", id="cancel", variant="error", disabled=True)
        with Horizontal(id="body"):
            with Vertical(id="beam-pane"):
                yield Static(COLUMNS, id="beam-columns")
                yield BeamView(id="beam")
                yield Static("", id="candidate-text", markup=False)
            with Vertical(id="side"):
                with VerticalScroll(id="rewards-box"):
                    yield RewardChart(id="rewards")
                yield DeferralLog(id="deferrals")
                yield LatencyPanel(id="latency")
        with Vertical(id="result"):
            yield AnswerPanel(id="answer")
            yield ComparePanel(id="compare-panel")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        for selector, title in (
            ("#beam-pane", "Beam"),
            ("#rewards-box", "Rewards"),
            ("#deferrals", "Deferrals and switches"),
            ("#latency", "Latency"),
            ("#result", "Answer"),
        ):
            self.query_one(selector).border_title = title
        self.query_one("#beam-pane").border_subtitle = FATE_LEGEND
        self.query_one("#compare-panel").display = False
        self.query_one("#candidate-text").display = False
        # Looked up once: the event handler runs up to REFRESH_HZ times a second.
        self._views = (
            self.query_one("#beam", BeamView),
            self.query_one("#rewards", RewardChart),
            self.query_one("#deferrals", DeferralLog),
            self.query_one("#latency", LatencyPanel),
        )
        self._pull_timer = self.set_interval(1 / REFRESH_HZ, self._pull, pause=True)
        self._update_subtitle()
        if self.replay is not None:
            self._start_replay(self.replay)
        else:
            self.query_one("#question", QuestionInput).focus()
            self._greet()

    # -- actions ---------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            # Only on the main screen: esc also closes dialogs and the palette.
            return self.running and len(self.screen_stack) == 1
        if action in ("solve", "compare"):
            return self.can_search
        return True

    def action_solve(self) -> None:
        self.start((self.method,))

    def action_compare(self) -> None:
        self.start(COMPARE_METHODS)

    def action_cancel(self) -> None:
        if not self.running:
            return
        self.workers.cancel_group(self, "search")
        self._status("Cancelling…")

    def action_copy_answer(self) -> None:
        answer = self.query_one("#answer", AnswerPanel).answer
        if answer is None:
            self.notify("There is no answer to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(answer)
        self.notify(f"Copied {answer}", markup=False)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self.can_search:
            yield SystemCommand("Solve", "Solve the question with the chosen preset and method", self.action_solve)
            yield SystemCommand(
                "Compare SPECS with beam search", "Run both on the question, side by side", self.action_compare
            )
        if self.running:
            yield SystemCommand(
                "Cancel search", "Stop the running search, keeping the best answer so far", self.action_cancel
            )
        yield SystemCommand("Copy answer", "Copy the final answer to the clipboard", self.action_copy_answer)
        yield SystemCommand("Help", "Keys and what each view shows", self.action_help)

    @on(Button.Pressed, "#solve")
    def _solve_pressed(self) -> None:
        self.action_solve()

    @on(Button.Pressed, "#compare")
    def _compare_pressed(self) -> None:
        self.action_compare()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.preset_name:
            self.preset_name = event.value
            self._update_subtitle()
            self._greet()

    @on(Select.Changed, "#method")
    def _method_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.method = event.value
            self._update_subtitle()

    @on(Tree.NodeHighlighted, "#beam")
    def _show_candidate(self, event: Tree.NodeHighlighted[str]) -> None:
        beam = self.query_one("#beam", BeamView)
        cand = beam.candidates.get(event.node.data or "")
        text = self.query_one("#candidate-text", Static)
        text.display = cand is not None
        if cand is not None:
            source = f"{cand.origin}, extends {cand.parent}" if cand.parent else cand.origin
            text.update(Text(f"{cand.id} ({source}): {cand.text.strip()}"))

    # -- starting a search ---------------------------------------------------------------

    def start(self, methods: tuple[str, ...]) -> bool:
        """Start a search of the question; False (with a hint) when it cannot."""
        if not self.can_search:
            return False
        if self.running:
            self.notify("A search is running; press esc to cancel it first.", severity="warning")
            return False
        box = self.query_one("#question", QuestionInput)
        question = box.text.strip()
        if not question:
            self.notify("Type a question first, e.g. What is 12 + 30?", severity="warning", title="Empty question")
            self._status("The question is empty: type one, then press ctrl+s.")
            box.focus()
            return False
        try:
            preset = self.catalog.preset(self.preset_name)
            settings = self._settings(preset)
        except (ConfigError, UserError) as exc:
            self.notify(str(exc), severity="error", title="Settings", markup=False)
            return False
        if preset.draft is None and any(m in NEEDS_DRAFT for m in methods):
            self.notify(
                f"The preset {preset.name} has no draft model; choose beam, best-of-n or greedy, or another preset.",
                severity="warning",
                markup=False,
            )
            return False
        missing = [_describe_model(m) for m in self._missing_models(preset, self.catalog)]
        if missing:
            self.push_screen(MissingModelsScreen(preset.name, missing))
            return False
        self.history.add(question)
        self._job_ids += 1
        job = Job(self._job_ids, question, preset, tuple(methods), settings)
        self._begin(job)
        compare = self.query_one("#compare-panel", ComparePanel)
        compare.display = len(methods) > 1
        # Side by side, the table holds both answers; one answer is drawn large.
        self.query_one("#answer", AnswerPanel).display = not compare.display
        self.query_one("#result").border_title = "Compare" if compare.display else "Answer"
        if compare.display:
            compare.start(list(methods))
        self._search(job)
        return True

    def _begin(self, job: Job | None) -> None:
        self.running = True
        self.current_job = job
        self.last_ended = None
        self.query_one("#answer", AnswerPanel).clear("Searching…" if job else "Replaying…")
        self.query_one("#candidate-text", Static).display = False
        self._set_controls()
        assert self._pull_timer is not None
        self._pull_timer.resume()

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search(self, job: Job) -> None:
        worker = get_current_worker()
        outcomes: list[RunOutcome] = []
        error: str | None = None
        assert self.engines is not None
        try:
            loaded = self.engines.is_open(job.preset, job.settings)
            self.post_message(StatusChanged("Starting…" if loaded else f"Loading the {job.preset.name} models…"))
            with self.engines.use(job.preset, self.catalog, job.settings) as engines:
                for method in job.methods:
                    if worker.is_cancelled:
                        break
                    self.post_message(StatusChanged(f"{method} on {job.preset.name}: searching…"))
                    finished = self._search_fn(
                        method,
                        job.question,
                        engines,
                        job.settings,
                        emit=self.buffer.emit,
                        should_stop=lambda: worker.is_cancelled,
                        clock=self._clock,
                    )
                    outcomes.append(RunOutcome(method, finished))
        except (UserError, ConfigError, EngineError, ValueError) as exc:
            # Said in one sentence by whoever raised it (ValueError: the search's refusals).
            error = str(exc)
        except Exception as exc:
            log.exception("search failed")
            error = f"{type(exc).__name__}: {exc}" + (f" (details in {self._log_path})" if self._log_path else "")
        finally:
            self.buffer.finish(SearchEnded(job.id, outcomes, error))

    def _start_replay(self, replay: Replay) -> None:
        started = next((e for e in replay.events if isinstance(e, SearchStarted)), None)
        box = self.query_one("#question", QuestionInput)
        box.load_text(started.question if started else "")
        box.read_only = True
        self._begin(None)
        self._play(replay)

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _play(self, replay: Replay) -> None:
        worker = get_current_worker()
        error: str | None = None
        try:
            note = f" ({replay.note})" if replay.note else ""
            self.post_message(StatusChanged(f"Replaying {replay.name} at {replay.speed:g}x…{note}"))
            play(replay.events, replay.speed, self.buffer.emit, lambda: worker.is_cancelled)
        except Exception as exc:
            log.exception("replay failed")
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.buffer.finish(SearchEnded(0, [], error))

    # -- events in -----------------------------------------------------------------------

    def _pull(self) -> None:
        if self._closing_down:
            return
        now = time.monotonic()
        if self._latency_stale and now - self._latency_painted >= LATENCY_TICK:
            self._paint_latency()
        if now - self._last_batch < 1 / PROGRESS_HZ and self.buffer.only_progress():
            return  # the waiting snapshots keep coalescing until a later tick
        events, ended = self.buffer.drain()
        if events:
            self._last_batch = now
            self.post_message(SearchEvents(tuple(events)))
        if ended is not None:
            assert isinstance(ended, SearchEnded)
            self.post_message(ended)

    def on_search_events(self, message: SearchEvents) -> None:
        if self._closing_down:
            return
        beam, rewards, deferrals, latency = self._views
        rewards_changed = False
        rows = len(rewards.steps)
        only_progress = True
        with self.batch_update():
            for event in message.events:
                beam.apply(event)
                rewards_changed |= rewards.apply(event)
                deferrals.apply(event)
                latency.apply(event)
                only_progress = only_progress and isinstance(event, DraftProgress)
                if isinstance(event, SearchStarted):
                    self._method_running = event.method
                    self._status(f"{event.method}: {one_line(event.question, 60)}")
                elif isinstance(event, StepStarted):
                    self._status(f"{self._method_running} · step {event.step} · {event.origin} drafting…")
                elif isinstance(event, Finished):
                    self._finished(event)
            beam.flush()
            # A new layout only when the chart grew a row; otherwise a repaint.
            if rewards_changed:
                grew = len(rewards.steps) != rows
                rewards.refresh(layout=grew)
                if grew:  # keep the newest step in view
                    self.call_after_refresh(self.query_one("#rewards-box").scroll_end, animate=False)
            # While text streams, the elapsed time ticks twice a second, not ten times.
            self._latency_stale = True
            if not only_progress:
                self._paint_latency()

    def _finished(self, finished: Finished) -> None:
        self.query_one("#answer", AnswerPanel).show(finished)
        compare = self.query_one("#compare-panel", ComparePanel)
        if compare.display:
            compare.add(RunOutcome(self._method_running, finished))
        if finished.error:
            self.notify(finished.error, severity="error", title="Search failed", markup=False)

    def _paint_latency(self) -> None:
        self._views[3].refresh()
        self._latency_painted = time.monotonic()
        self._latency_stale = False

    def on_search_ended(self, message: SearchEnded) -> None:
        self.running = False
        if self._closing_down:
            return
        self.last_ended = message
        assert self._pull_timer is not None
        self._pull_timer.pause()
        self._paint_latency()
        self._set_controls()
        if message.error:
            self.notify(message.error, severity="error", title="Search failed", markup=False)
            self._status(f"Search failed: {message.error}  Fix it, or try another question.")
        elif self.replay is not None:
            self._status("Replay finished.")
        elif message.outcomes and message.outcomes[-1].finished.cancelled:
            self._status("Cancelled; the best answer so far is shown.")
        elif len(message.outcomes) < len(self.current_job.methods if self.current_job else ()):
            self._status("Cancelled.")
        else:
            self._status("Done. ctrl+o copies the answer; ctrl+s solves again.")

    def on_status_changed(self, message: StatusChanged) -> None:
        if not self._closing_down:
            self._status(message.text)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def _closing_down(self) -> bool:
        """The app is exiting: messages still queued must not touch removed widgets."""
        return not self._views or not self._views[0].is_attached

    def _greet(self) -> None:
        """Say up front when the chosen preset's models still need downloading."""
        preset = self.catalog.preset(self.preset_name)
        if self._missing_models(preset, self.catalog):
            self._status(f"The {preset.name} models are not downloaded yet: specs-local download {preset.name}")
        else:
            self._status("Type a question and press ctrl+s (F1: help).")

    def _status(self, text: str) -> None:
        # One line of fixed size: a repaint, never a new layout.
        self.query_one("#status", Static).update(Text(text), layout=False)

    def _update_subtitle(self) -> None:
        self.sub_title = f"{self.replay.name} (replay)" if self.replay else f"{self.preset_name} · {self.method}"

    @property
    def can_search(self) -> bool:
        return self.engines is not None and self.replay is None

    def _set_controls(self) -> None:
        idle = not self.running and self.can_search
        for selector in ("#solve", "#compare", "#preset", "#method"):
            self.query_one(selector).disabled = not idle
        self.query_one("#cancel").disabled = not self.running
        self.refresh_bindings()
