"""The specs-local terminal app: ask a question, watch SPECS search.

The app composes the panes and routes messages: keys and buttons start and
cancel jobs (`jobs.JobControl` runs them in a thread worker), and each batch
of a job's events goes to every `EventView`, which draws once per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Select

from app.config import Catalog
from app.errors import UserError
from app.search import run
from app.search.events import SearchStarted
from app.search.settings import METHODS
from app.tui.answer import AnswerPanel
from app.tui.beam_pane import BeamPane
from app.tui.compare import COMPARED
from app.tui.deferrals import DeferralLog
from app.tui.engines import EngineCache, EnginesFactory
from app.tui.history import History
from app.tui.jobs import (
    JobControl,
    MissingModelsFn,
    ModelsMissing,
    Refused,
    Replay,
    SearchFn,
    SettingsFn,
    ended_line,
)
from app.tui.latency import LatencyPanel
from app.tui.messages import SearchEnded, SearchEvents, StatusChanged
from app.tui.question import QuestionInput
from app.tui.result import ResultPane
from app.tui.rewards import RewardsPane
from app.tui.screens import HelpScreen, MissingModelsScreen
from app.tui.status import StatusBar
from app.tui.views import EventView


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
        self.jobs = JobControl(
            self,
            catalog,
            engines=self.engines,
            search=search,
            settings=settings or (lambda preset: preset.settings()),
            missing_models=missing_models or (lambda preset, catalog: []),
            clock=clock,
            log_path=log_path,
        )
        self.history = History(history_path)
        self.replay = replay
        self._cursor_blink = cursor_blink
        self._views: tuple[EventView, ...] = ()
        self._status_bar: StatusBar | None = None

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
            yield BeamPane(id="beam-pane")
            with Vertical(id="side"):
                yield RewardsPane(id="rewards-box")
                yield DeferralLog(id="deferrals")
                yield LatencyPanel(id="latency")
        yield ResultPane(id="result")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self._status_bar = self.query_one(StatusBar)
        # Looked up once: the event handler runs up to REFRESH_HZ times a second.
        self._views = (
            self.query_one(BeamPane),
            self.query_one(RewardsPane),
            self.query_one(DeferralLog),
            self.query_one(LatencyPanel),
            self.query_one(ResultPane),
            self._status_bar,
        )
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
            return self.jobs.running and len(self.screen_stack) == 1
        if action in ("solve", "compare"):
            return self.can_search
        return True

    def action_solve(self) -> None:
        self.start((self.method,))

    def action_compare(self) -> None:
        self.start(tuple(COMPARED))

    def action_cancel(self) -> None:
        if not self.jobs.running:
            return
        self.jobs.cancel()
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
        if self.jobs.running:
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

    # -- starting a job ----------------------------------------------------------------------

    def start(self, methods: tuple[str, ...]) -> bool:
        """Start a search of the question; False (with a hint) when it cannot."""
        if not self.can_search:
            return False
        if self.jobs.running:
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
            job = self.jobs.plan(question, self.preset_name, methods)
        except Refused as refused:
            self.notify(str(refused), severity=refused.severity, title=refused.title, markup=False)
            return False
        except ModelsMissing as missing:
            self.push_screen(MissingModelsScreen(missing.preset, missing.names))
            return False
        self.history.add(question)
        self.query_one(ResultPane).begin("Searching…", job.methods)
        self.jobs.search(job)
        self._set_controls()
        return True

    def _start_replay(self, replay: Replay) -> None:
        started = next((e for e in replay.events if isinstance(e, SearchStarted)), None)
        box = self.query_one("#question", QuestionInput)
        box.load_text(started.question if started else "")
        box.read_only = True
        self.query_one(ResultPane).begin("Replaying…")
        self.jobs.replay(replay)
        self._set_controls()

    # -- messages from the job -----------------------------------------------------------------

    def on_search_events(self, message: SearchEvents) -> None:
        if self._closing_down:
            return
        with self.batch_update():
            changed: set[EventView] = set()
            for event in message.events:
                for view in self._views:
                    if view.apply(event):
                        changed.add(view)
            for view in self._views:
                if view in changed:
                    view.flush()

    def on_search_ended(self, message: SearchEnded) -> None:
        self.jobs.ended(message)
        if self._closing_down:
            return
        self._set_controls()
        if message.error:
            self.notify(message.error, severity="error", title="Search failed", markup=False)
        self._status(ended_line(message, self.jobs.job))

    def on_status_changed(self, message: StatusChanged) -> None:
        if not self._closing_down:
            self._status(message.text)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def _closing_down(self) -> bool:
        """The app is exiting: messages still queued must not touch removed widgets."""
        return self._status_bar is None or not self._status_bar.is_attached

    @property
    def can_search(self) -> bool:
        return self.engines is not None and self.replay is None

    def _greet(self) -> None:
        """Say up front when the chosen preset's models still need downloading."""
        preset = self.catalog.preset(self.preset_name)
        if self.jobs.missing(preset):
            self._status(f"The {preset.name} models are not downloaded yet: specs-local download {preset.name}")
        else:
            self._status("Type a question and press ctrl+s (F1: help).")

    def _status(self, text: str) -> None:
        self.query_one(StatusBar).say(text)

    def _update_subtitle(self) -> None:
        self.sub_title = f"{self.replay.name} (replay)" if self.replay else f"{self.preset_name} · {self.method}"

    def _set_controls(self) -> None:
        idle = not self.jobs.running and self.can_search
        for selector in ("#solve", "#compare", "#preset", "#method"):
            self.query_one(selector).disabled = not idle
        self.query_one("#cancel").disabled = not self.jobs.running
        self.refresh_bindings()
