"""SPECS and target beam search on one question, side by side."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from app.render import ROLES, acceptance, speedup, tokens_per_second, used_roles
from app.tui.messages import RunOutcome

# What a compare runs, in this order, under these column heads.
COMPARED = {"specs": "SPECS", "beam": "beam search (target)"}


def compare_line(outcomes: list[RunOutcome]) -> str:
    """`SPECS 2.1x faster than beam search (5.2 s vs 11.0 s)`, once both have run."""
    if len(outcomes) < 2:
        return ""
    first, second = outcomes[0], outcomes[1]
    a, b = first.finished.stats.wall_seconds, second.finished.stats.wall_seconds
    name_a, name_b = COMPARED.get(first.method, first.method), COMPARED.get(second.method, second.method)
    return f"{name_a} {speedup(a, b)} than {name_b} ({a:.1f} s vs {b:.1f} s)"


class ComparePanel(Static):
    DEFAULT_CSS = """
    ComparePanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.outcomes: list[RunOutcome] = []
        self.pending: list[str] = []
        self.summary = ""

    def start(self, methods: list[str]) -> None:
        self.outcomes = []
        self.pending = list(methods)
        self._draw()

    def add(self, outcome: RunOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.method in self.pending:
            self.pending.remove(outcome.method)
        self._draw()

    def _draw(self) -> None:
        table = Table(expand=True, show_edge=False, pad_edge=False, box=None)
        table.add_column("", style="dim", no_wrap=True)
        for method in [o.method for o in self.outcomes] + self.pending:
            table.add_column(COMPARED.get(method, method), ratio=1, no_wrap=True, header_style="bold")
        rows: dict[str, list[Text | str]] = {
            "answer": [],
            "latency": [],
            "draft / target / reward": [],
            "tok/s": [],
            "acceptance": [],
        }
        for o in self.outcomes:
            f, stats = o.finished, o.finished.stats
            roles = used_roles(stats)
            rows["answer"].append(Text(f.answer or ("cancelled" if f.cancelled else "no answer"), style="bold"))
            rows["latency"].append(Text(f"{stats.wall_seconds:.1f} s", style="bold"))
            rows["draft / target / reward"].append(
                " / ".join(f"{stats.models[r].seconds:.1f}" if r in roles else "–" for r in ROLES) + " s"
            )
            rows["tok/s"].append(f"{tokens_per_second(stats):.0f}")
            rows["acceptance"].append(
                f"{acceptance(stats)} · {stats.deferrals} deferral{'' if stats.deferrals == 1 else 's'}"
                if "draft" in roles
                else "–"
            )
        for _ in self.pending:
            for cells in rows.values():
                cells.append(Text("…", style="dim"))
        for name, cells in rows.items():
            table.add_row(name, *cells)
        self.summary = compare_line(self.outcomes)
        self.update(Group(table, Text(self.summary, style="bold green")) if self.summary else table)
