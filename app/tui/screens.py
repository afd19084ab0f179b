"""Modal screens: the key help and the missing-models notice."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Markdown, Static

HELP = """\
# specs-local

A small **draft** model proposes each reasoning step, the **target** model and a
**reward** model judge the candidates, and SPECS keeps the best one. When no
draft is good enough (best tilted score below τ_accept) the step is
**deferred** to the target; after a target step whose reward clears τ_switch,
drafting resumes.

| Key | Action |
|-----|--------|
| `ctrl+s` | solve the question with the chosen preset and method |
| `ctrl+b` | compare: SPECS, then target beam search, side by side |
| `esc` / `ctrl+c` | cancel the running search |
| `ctrl+o` | copy the answer to the clipboard |
| `up` / `down` | at the first / last line of the question: previous / next question |
| `tab` | move between the question, selectors, buttons and the beam tree |
| `ctrl+p` | command palette (every action is there too) |
| `F1` / `?` | this help |
| `ctrl+q` | quit |

**Beam view**: each step with all its candidates: origin (draft or target),
reward `r`, target-minus-draft log-probability `Δ`, tilted score `s` and fate.
The accepted path is green; the cursor on a candidate shows its whole text.

**Rewards**: per step, the spread of candidate rewards (grey bar) and the one
chosen (dot), with τ_switch marked; for SPECS the tilted scores with τ_accept.

**Latency**: elapsed time, time in each model as a stacked bar, tokens per
second, acceptance rate (share of steps the draft wrote) and deferrals.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Markdown(HELP)
            yield Button("Close", id="help-close", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss()


class MissingModelsScreen(ModalScreen[None]):
    """Names what is missing and the command that fetches it; never a crash."""

    BINDINGS = [Binding("escape,enter,q", "dismiss", "Close")]

    def __init__(self, preset: str, missing: list[str]) -> None:
        super().__init__()
        self.preset = preset
        self.missing = missing

    def compose(self) -> ComposeResult:
        names = "\n".join(f"  • {name}" for name in self.missing)
        with Vertical(id="missing-box", classes="dialog"):
            yield Static(
                f"The preset [b]{escape(self.preset)}[/b] needs models that are not on this machine:",
                id="missing-title",
            )
            yield Static(names, id="missing-names", markup=False)
            yield Static("Download them with:", id="missing-hint")
            yield Static(f"  specs-local download {self.preset}", id="missing-command", markup=False)
            yield Static("or pick another preset.", id="missing-other")
            yield Button("Close", id="missing-close", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss()
