"""The tree of steps: every candidate of every step, its scores and its fate."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from app.render import one_line
from app.search.events import (
    BeamPruned,
    CandidateCompleted,
    CandidateFates,
    CandidatesDrafted,
    CandidatesScored,
    DraftProgress,
    Event,
    Fate,
    Finished,
    Origin,
    SearchStarted,
    StepAccepted,
    StepStarted,
)

TEXT_WIDTH = 96

ORIGIN_STYLE = {"draft": "cyan", "target": "magenta"}
FATE_STYLE: dict[str, tuple[str, str]] = {
    "accepted": ("✔", "bold green"),
    "completed": ("★", "bold bright_cyan"),
    "rejected": ("✘", "red"),
    "pruned": ("✂", "dim"),
    "duplicate": ("≡", "yellow"),
}
FATE_LEGEND = "  ".join(f"{mark} {fate}" for fate, (mark, _) in FATE_STYLE.items())
# The column heads of a candidate line, indented to where candidates start in the tree.
COLUMNS = "      id   by reward  Δlogp  score    text"


@dataclass
class CandidateRow:
    """What the beam view knows about one candidate."""

    id: str
    step: int
    origin: Origin
    parent: str = ""
    text: str = ""
    n_tokens: int = 0
    drafting: bool = True
    reward: float | None = None
    score: float | None = None
    target_logprob: float | None = None
    draft_logprob: float | None = None
    # Set when the arithmetic check scaled the reward down: the target's
    # probability of the step's least likely result.
    doubted_result: float | None = None
    false_equation: str | None = None  # set when the equation check zeroed the reward
    fate: Fate | None = None
    answer: str | None = None
    on_path: bool = False

    @property
    def log_ratio(self) -> float | None:
        """log p_target - log p_draft of the step, the term the score tilts by."""
        if self.target_logprob is None or self.draft_logprob is None:
            return None
        return self.target_logprob - self.draft_logprob


@dataclass
class StepRow:
    step: int
    origins: list[Origin] = field(default_factory=list)
    parents: tuple[str, ...] = ()
    accepted: str | None = None


def _number(value: float | None, fmt: str, width: int) -> str:
    return format(value, fmt).rjust(width) if value is not None else "·".rjust(width)


def candidate_label(row: CandidateRow, *, show_parent: bool = False) -> Text:
    """One line per candidate; `show_parent` when a step extends several beams."""
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append(f"{row.id:<5} ", style="bold" if row.on_path else "")
    label.append(row.origin[0].upper(), style=ORIGIN_STYLE[row.origin])
    label.append(
        f"  {_number(row.reward, '.2f', 5)} {_number(row.log_ratio, '+.2f', 6)} {_number(row.score, '.2f', 6)} "
    )
    if row.fate is not None:
        mark, style = FATE_STYLE[row.fate]
        label.append(mark, style=style)
    elif row.drafting:
        label.append("…", style="italic")
    else:
        label.append("·", style="dim")
    text = one_line(row.text, TEXT_WIDTH) or "(empty)"
    label.append("  ")
    if show_parent and row.parent:
        label.append(f"[{row.parent}] ", style="dim")
    if row.doubted_result is not None:
        label.append(f"=?{row.doubted_result:.2f} ", style="bold red")
    if row.false_equation is not None:
        label.append("=✗ ", style="bold red")
    label.append(
        text, style="bold green" if row.on_path else ("dim" if row.fate in ("pruned", "rejected", "duplicate") else "")
    )
    if row.answer is not None:
        label.append(f"  → {row.answer}", style="bold")
    return label


def step_label(row: StepRow) -> Text:
    label = Text(f"Step {row.step}", style="bold")
    for i, origin in enumerate(row.origins):
        label.append(" → " if i else "  ", style="dim")
        label.append(origin, style=ORIGIN_STYLE[origin])
    if row.accepted:
        label.append(f"  ✔ {row.accepted}", style="green")
    return label


class BeamView(Tree[str]):
    """Steps under the question, each step's candidates under it.

    Node data is the candidate id (or "" for a step node), so the pane can
    show a candidate's whole text when the cursor is on it.
    """

    DEFAULT_CSS = """
    BeamView { scrollbar-size-vertical: 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("No question yet", data="", id=id)
        self.show_root = True
        self.guide_depth = 3
        self.candidates: dict[str, CandidateRow] = {}
        self.steps: dict[int, StepRow] = {}
        self._candidate_nodes: dict[str, TreeNode[str]] = {}
        self._step_nodes: dict[int, TreeNode[str]] = {}
        self._dirty: set[str] = set()
        self._new_step = False
        self._result_check = 0.0

    # The pane feeds every event; the view keeps what a reader of the beam needs.
    def apply(self, event: Event) -> bool:
        """Take the next event; True when the tree changed (drawn by `flush`)."""
        if isinstance(event, SearchStarted):
            self._reset(event.question)
            check = event.settings.get("result_check", 0.0)
            self._result_check = float(check) if isinstance(check, (int, float)) else 0.0
        elif isinstance(event, StepStarted):
            step = self._step(event.step)
            step.origins.append(event.origin)
            step.parents = event.parents
            self._step_nodes[event.step].set_label(step_label(step))
        elif isinstance(event, DraftProgress):
            for cid, text in zip(event.ids, event.texts):
                streamed = self._candidate(cid, event.step, event.origin)
                if streamed.drafting:
                    streamed.text = text
                    self._dirty.add(cid)
        elif isinstance(event, CandidatesDrafted):
            for c in event.candidates:
                drafted = self._candidate(c.id, event.step, event.origin)
                drafted.parent, drafted.text, drafted.n_tokens, drafted.drafting = c.parent, c.text, c.n_tokens, False
                self._dirty.add(c.id)
            self._drop_unfinished(event.step, event.origin)
        elif isinstance(event, CandidatesScored):
            for s in event.scores:
                scored = self.candidates.get(s.id)
                if scored is not None:
                    scored.reward, scored.score = s.reward, s.merit
                    scored.target_logprob, scored.draft_logprob = s.target_logprob, s.draft_logprob
                    if s.result_prob is not None and s.result_prob < self._result_check:
                        scored.doubted_result = s.result_prob
                    scored.false_equation = s.false_equation
                    self._dirty.add(s.id)
        elif isinstance(event, CandidateFates):
            for cid, fate in event.fates.items():
                self._set_fate(cid, fate)
        elif isinstance(event, StepAccepted):
            self._set_fate(event.id, "accepted")
            accepted = self.candidates.get(event.id)
            if accepted is not None:
                accepted.on_path = True
            step = self._step(event.step)
            step.accepted = event.id
            self._step_nodes[event.step].set_label(step_label(step))
        elif isinstance(event, BeamPruned):
            for cid in event.pruned:
                self._set_fate(cid, "pruned")
        elif isinstance(event, CandidateCompleted):
            self._set_fate(event.id, "completed")
            completed = self.candidates.get(event.id)
            if completed is not None:
                completed.answer = event.answer
        elif isinstance(event, Finished):
            self._mark_path(event)
        else:
            return False
        return True

    def flush(self) -> None:
        """Relabel the candidates that changed since the last flush."""
        for cid in self._dirty:
            node = self._candidate_nodes.get(cid)
            if node is not None:
                row = self.candidates[cid]
                step = self.steps.get(row.step)
                node.set_label(candidate_label(row, show_parent=step is not None and len(step.parents) > 1))
        self._dirty.clear()
        # Follow the newest step unless the user is browsing the tree.
        if self._new_step and not self.has_focus:
            self.call_after_refresh(self.scroll_end, animate=False)
        self._new_step = False

    def accepted_path(self) -> list[str]:
        return [c.id for c in self.candidates.values() if c.on_path]

    def _reset(self, question: str) -> None:
        self.clear()
        self.root.set_label(Text(one_line(question, TEXT_WIDTH), style="bold"))
        self.root.data = ""
        self.root.expand()
        self.candidates.clear()
        self.steps.clear()
        self._candidate_nodes.clear()
        self._step_nodes.clear()
        self._dirty.clear()

    def _step(self, step: int) -> StepRow:
        row = self.steps.get(step)
        if row is None:
            row = self.steps[step] = StepRow(step)
            node = self.root.add(step_label(row), data="", expand=True)
            self._step_nodes[step] = node
            self._new_step = True
        return row

    def _candidate(self, cid: str, step: int, origin: Origin) -> CandidateRow:
        cand = self.candidates.get(cid)
        if cand is None:
            self._step(step)
            cand = self.candidates[cid] = CandidateRow(cid, step, origin)
            self._candidate_nodes[cid] = self._step_nodes[step].add_leaf(candidate_label(cand), data=cid)
        return cand

    def _drop_unfinished(self, step: int, origin: Origin) -> None:
        """Streamed rows that the finished batch does not contain never existed."""
        stale = [c.id for c in self.candidates.values() if c.step == step and c.origin == origin and c.drafting]
        for cid in stale:
            del self.candidates[cid]
            self._candidate_nodes.pop(cid).remove()
            self._dirty.discard(cid)

    def _set_fate(self, cid: str, fate: Fate) -> None:
        cand = self.candidates.get(cid)
        # "accepted" and "completed" say more than a later "pruned" of the same id.
        if cand is not None and cand.fate not in ("accepted", "completed"):
            cand.fate = fate
            self._dirty.add(cid)

    def _mark_path(self, finished: Finished) -> None:
        """Light up the chain of parents that led to the chosen solution."""
        chosen = next(
            (c for c in self.candidates.values() if c.fate == "completed" and c.answer == finished.answer),
            None,
        )
        chain: set[str] = set()
        while chosen is not None:
            chain.add(chosen.id)
            chosen = self.candidates.get(chosen.parent)
        if chain:
            # With several beams, steps accepted on the way may not lead to the answer.
            for row in self.candidates.values():
                if row.on_path != (row.id in chain):
                    row.on_path = row.id in chain
                    self._dirty.add(row.id)
        if finished.answer is not None:
            self.root.set_label(
                Text.assemble(
                    (one_line(str(self.root.label), TEXT_WIDTH), "bold"),
                    ("  → ", "dim"),
                    (finished.answer, "bold green"),
                )
            )
