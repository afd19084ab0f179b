"""The beam pane: the tree of steps under its column heads, with the whole text
of the candidate under the cursor below it."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static, Tree

from app.search.events import Event, SearchStarted
from app.tui.beam_view import COLUMNS, FATE_LEGEND, BeamView


class BeamPane(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.beam = BeamView(id="beam")
        # The tree cuts long lines; this shows the whole text of one candidate.
        self.detail = Static("", id="candidate-text", markup=False)

    def compose(self) -> ComposeResult:
        yield Static(COLUMNS, id="beam-columns")
        yield self.beam
        yield self.detail

    def on_mount(self) -> None:
        self.border_title = "Beam"
        self.border_subtitle = FATE_LEGEND
        self.detail.display = False

    def apply(self, event: Event) -> bool:
        if isinstance(event, SearchStarted):
            self.detail.display = False  # its candidate leaves with the old tree
        return self.beam.apply(event)

    def flush(self) -> None:
        self.beam.flush()

    @on(Tree.NodeHighlighted, "#beam")
    def _show_candidate(self, event: Tree.NodeHighlighted[str]) -> None:
        cand = self.beam.candidates.get(event.node.data or "")
        self.detail.display = cand is not None
        if cand is not None:
            source = f"{cand.origin}, extends {cand.parent}" if cand.parent else cand.origin
            self.detail.update(Text(f"{cand.id} ({source}): {cand.text.strip()}"))
