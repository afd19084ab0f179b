"""Beam search guided by the reward model, as search-and-learn runs it.

Each step every kept prefix gets ceil(n/m) continuations (n in all; m =
beam_width), the reward model judges the newest step of each, completed ones
are collected, and the m live candidates with the highest reward are kept.
The search stops when nothing is live or n solutions have completed. `beam`
searches with the target model, `beam-draft` with the draft (BS(B) and
BS(S) in the paper). The answer is the completion with the highest reward
(or a reward-weighted vote with answer_selection="vote").
"""

from __future__ import annotations

from collections.abc import Callable

from app.search.context import SearchContext
from app.search.events import BeamPruned, Fate, Origin
from app.search.steps import (
    accept,
    advance,
    collect,
    dedupe,
    draw,
    judge,
    per_beam,
    report_fates,
    report_scores,
    start_step,
)

# (number of kept prefixes, step) -> continuations per prefix
Expansions = Callable[[int, int], int]


def grow(
    ctx: SearchContext, role: Origin, expansions: Expansions, keep: int | None, *, independent: bool = False
) -> None:
    """The step loop shared by beam search and best-of-n.

    `keep` live candidates survive each step (None: all of them). Beam search
    drops duplicate texts and ends once n solutions have completed;
    `independent` chains (best-of-n) keep their duplicates, which are votes,
    and run until every chain has completed.
    """
    s = ctx.settings
    beams = [ctx.start((role,))]
    for step in range(s.max_steps):
        start_step(ctx, step, role, beams)
        fates: dict[str, Fate] = {}
        params = ctx.sample_params(step, role)
        drafted = draw(ctx, step, role, beams, expansions(len(beams), step), params)
        candidates = drafted if independent else dedupe(ctx, drafted, fates)
        t0 = ctx.clock()
        judge(ctx, candidates)
        for c in candidates:
            c.score = c.reward or 0.0
        report_scores(ctx, step, role, candidates, t0)
        live = collect(ctx, step, candidates, fates)
        ctx.counters.step_done(role)
        if not independent and len(ctx.completed) >= s.n:
            fates.update({c.id: "pruned" for c in live})
            report_fates(ctx, step, fates)
            advance(ctx, [], live, beams)
            return
        ranked = sorted(live, key=lambda c: -c.score)
        kept, pruned = ranked[:keep], ranked[len(ranked) if keep is None else keep :]
        fates.update({c.id: "accepted" for c in kept})
        fates.update({c.id: "pruned" for c in pruned})
        report_fates(ctx, step, fates)
        if pruned:
            ctx.emit(BeamPruned, step=step, kept=tuple(c.id for c in kept), pruned=tuple(c.id for c in pruned))
        accept(ctx, step, kept)
        beams = advance(ctx, kept, pruned, beams)
        if not beams:
            return


def _beam(ctx: SearchContext, role: Origin) -> None:
    grow(ctx, role, lambda beams, step: per_beam(ctx.settings.n, beams), ctx.settings.beam_width)


def search_target(ctx: SearchContext) -> None:
    _beam(ctx, "target")


def search_draft(ctx: SearchContext) -> None:
    _beam(ctx, "draft")
