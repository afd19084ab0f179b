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
from app.search.events import Origin
from app.search.steps import Step, per_beam

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
    for number in range(s.max_steps):
        step = Step.begin(ctx, number, role, beams)
        drawn = step.draw(expansions(len(beams), number))
        candidates = drawn if independent else step.dedupe(drawn)
        step.reward(candidates)
        live = step.collect(candidates)
        if not independent and len(ctx.completed) >= s.n:
            step.keep([], pruned=live)
            return
        ranked = sorted(live, key=lambda c: -c.reward)
        width = len(ranked) if keep is None else keep
        beams = step.keep(ranked[:width], pruned=ranked[width:], announce_pruned=True)
        if not beams:
            return


def _beam(ctx: SearchContext, role: Origin) -> None:
    grow(ctx, role, lambda beams, step: per_beam(ctx.settings.n, beams), ctx.settings.beam_width)


def search_target(ctx: SearchContext) -> None:
    _beam(ctx, "target")


def search_draft(ctx: SearchContext) -> None:
    _beam(ctx, "draft")
