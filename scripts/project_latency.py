"""PROJECTED latency of SPECS against target beam search, from per-operation
costs measured by scripts/bench_engine.py and operation counts of real searches.

    python scripts/project_latency.py --draft bench-1.5b.json --target bench-7b.json \\
        --prm bench-7b.json --traces traces/ [--acceptance 0.8] [--deferral 0.1]

This is a projection, not a measurement: no search runs. Inputs:

- per-operation costs, each the JSON line bench_engine.py prints for one model:
  c_m(B), the seconds of one decode step of model m with B candidates live
  (B / engine tokens per second at batch B, measured at 1, 4 and 8,
  interpolated linearly between and extrapolated past 8 from 4 and 8); and
  f_m, the seconds per teacher-forced token (1 / scoring tokens per second).
  The draft and target bench the paper's draft and target shapes; the PRM is
  charged as teacher forcing under its shape (a PRM scores a step by reading
  its tokens once).
- operation counts, from traces of `specs-local bench` runs (JSON lines of
  events; SearchStarted says the method): for each step, the token counts of
  the candidates drafted, and the steps, draft steps and deferrals of each
  search.

Formula, per problem, with S the mean accepted steps of the SPECS searches, a
the acceptance rate (accepted steps that came from the draft, per step) and d
the deferrals per step (draft steps thrown away for the target to redo):

    G_m(L_1..L_k) = sum over t = 1..max L of c_m(#{j: L_j >= t})   generate k candidates
    D  = mean over SPECS draft steps of  G_draft(L) + f_target * sum L + f_prm * sum L
    Tg = mean over beam-search steps of  G_target(L) + f_prm * sum L
    SPECS = S * ((a + d) * D + (1 - a) * Tg)
    beam  = S_beam * Tg

where S_beam is the mean steps of the beam searches. `--acceptance` and
`--deferral` replace a and d (by default, the traces' own rates). Candidates
that share a history share a decode row in the engine; the projection charges
every live candidate as a row of the batch (on a GPU a batch of up to 8 rows
costs about one row, so this changes little).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Costs:
    """Measured per-operation costs of one model."""

    step_seconds: dict[int, float]  # batch size -> seconds per decode step
    forced_token_seconds: float

    @classmethod
    def from_bench(cls, path: Path) -> Costs:
        """From bench_engine.py's JSON line (the last line of its output, or a file holding it)."""
        lines = [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
        if not lines:
            raise SystemExit(f"{path} holds no JSON line of bench_engine.py")
        data = json.loads(lines[-1])
        steps = {int(b): int(b) / row["engine_tok_s"] for b, row in data["batch"].items()}
        return cls(steps, 1 / data["score_tok_s"])

    def step(self, batch: int) -> float:
        """Seconds per decode step with `batch` live candidates (linear in between and beyond)."""
        sizes = sorted(self.step_seconds)
        if batch in self.step_seconds:
            return self.step_seconds[batch]
        if len(sizes) == 1:
            return self.step_seconds[sizes[0]] * batch / sizes[0]
        below = [b for b in sizes if b < batch]
        above = [b for b in sizes if b > batch]
        lo, hi = (
            (below[-1], above[0]) if below and above else ((sizes[-2], sizes[-1]) if below else (sizes[0], sizes[1]))
        )
        slope = (self.step_seconds[hi] - self.step_seconds[lo]) / (hi - lo)
        return max(0.0, self.step_seconds[lo] + slope * (batch - lo))

    def generate(self, lengths: Sequence[int]) -> float:
        """Seconds to sample candidates of these token counts in one batched call."""
        return sum(self.step(sum(n >= t for n in lengths)) for t in range(1, max(lengths, default=0) + 1))


@dataclass
class Search:
    """The operation counts of one traced search."""

    method: str
    draft_steps: list[list[int]] = field(default_factory=list)  # token counts of drafted candidates
    target_steps: list[list[int]] = field(default_factory=list)
    steps: int = 0
    accepted_from_draft: int = 0
    deferrals: int = 0


def read_search(path: Path) -> Search:
    search: Search | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        event = json.loads(line)
        kind = event.get("event")
        if kind == "SearchStarted":
            search = Search(event["method"])
        elif search is None:
            raise SystemExit(f"{path}:{number}: a trace must start with SearchStarted")
        elif kind == "CandidatesDrafted":
            lengths = [c["n_tokens"] for c in event["candidates"]]
            (search.draft_steps if event["origin"] == "draft" else search.target_steps).append(lengths)
        elif kind == "Finished":
            stats = event["stats"]
            search.steps = stats["steps"]
            search.accepted_from_draft = stats["draft_steps"]
            search.deferrals = stats["deferrals"]
    if search is None or not search.steps:
        raise SystemExit(f"{path} is not a finished search's trace")
    return search


def trace_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    return files


@dataclass(frozen=True)
class Projection:
    specs_seconds: float
    beam_seconds: float
    steps: float
    beam_steps: float
    acceptance: float
    deferral: float
    draft_step_seconds: float
    target_step_seconds: float

    @property
    def ratio(self) -> float:
        return self.specs_seconds / self.beam_seconds


def project(
    searches: Sequence[Search],
    draft: Costs,
    target: Costs,
    prm: Costs,
    *,
    acceptance: float | None = None,
    deferral: float | None = None,
) -> Projection:
    specs = [s for s in searches if s.method == "specs"]
    beams = [s for s in searches if s.method == "beam"]
    if not specs or not beams:
        raise SystemExit("the traces must include SPECS searches and beam searches")
    draft_steps = [lengths for s in specs for lengths in s.draft_steps if lengths]
    beam_steps = [lengths for s in beams for lengths in s.target_steps if lengths]
    if not draft_steps or not beam_steps:
        raise SystemExit("the SPECS traces need draft steps and the beam traces target steps")
    total_steps = sum(s.steps for s in specs)
    a = acceptance if acceptance is not None else sum(s.accepted_from_draft for s in specs) / total_steps
    d = deferral if deferral is not None else sum(s.deferrals for s in specs) / total_steps
    d_cost = statistics.fmean(
        draft.generate(L) + (target.forced_token_seconds + prm.forced_token_seconds) * sum(L) for L in draft_steps
    )
    t_cost = statistics.fmean(target.generate(L) + prm.forced_token_seconds * sum(L) for L in beam_steps)
    steps = total_steps / len(specs)
    beam_step_count = statistics.fmean(s.steps for s in beams)
    return Projection(
        specs_seconds=steps * ((a + d) * d_cost + (1 - a) * t_cost),
        beam_seconds=beam_step_count * t_cost,
        steps=steps,
        beam_steps=beam_step_count,
        acceptance=a,
        deferral=d,
        draft_step_seconds=d_cost,
        target_step_seconds=t_cost,
    )


def report(p: Projection, draft: Costs, target: Costs, prm: Costs, n_specs: int, n_beam: int) -> str:
    def costs(name: str, c: Costs) -> str:
        steps = ", ".join(f"B={b}: {s * 1e3:.2f} ms" for b, s in sorted(c.step_seconds.items()))
        return f"  {name}: decode step {steps}; teacher-forced token {c.forced_token_seconds * 1e3:.3f} ms"

    return "\n".join(
        [
            "PROJECTION (computed from measured per-operation costs and traced operation counts; no search ran)",
            "inputs:",
            costs("draft", draft),
            costs("target", target),
            costs("PRM", prm),
            f"  traces: {n_specs} SPECS searches ({p.steps:.1f} steps each), {n_beam} beam searches "
            f"({p.beam_steps:.1f} steps each)",
            f"  acceptance a = {p.acceptance:.2f}, deferrals per step d = {p.deferral:.2f}",
            f"  draft step D = {p.draft_step_seconds:.3f} s, target step Tg = {p.target_step_seconds:.3f} s",
            f"projected SPECS {p.specs_seconds:.2f} s, beam search {p.beam_seconds:.2f} s per problem: "
            f"SPECS / beam = {p.ratio:.2f}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draft", type=Path, required=True, help="bench_engine.py output for the draft's shape")
    parser.add_argument("--target", type=Path, required=True, help="... for the target's shape")
    parser.add_argument("--prm", type=Path, required=True, help="... for the PRM's shape")
    parser.add_argument("--traces", type=Path, nargs="+", required=True, help="trace files or directories")
    parser.add_argument("--acceptance", type=float, help="accepted draft steps per step (default: the traces')")
    parser.add_argument("--deferral", type=float, help="deferrals per step (default: the traces')")
    args = parser.parse_args(argv)
    for name in ("acceptance", "deferral"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            sys.exit(f"--{name} must be between 0 and 1, not {value}")
    draft, target, prm = (Costs.from_bench(p) for p in (args.draft, args.target, args.prm))
    searches = [read_search(path) for path in trace_files(args.traces)]
    p = project(searches, draft, target, prm, acceptance=args.acceptance, deferral=args.deferral)
    n_specs = sum(s.method == "specs" for s in searches)
    print(report(p, draft, target, prm, n_specs, len(searches) - n_specs))
    print(json.dumps({"projection": True, **{k: round(v, 4) for k, v in vars(p).items()}, "ratio": round(p.ratio, 4)}))


if __name__ == "__main__":
    main()
