"""Best-of-n: n independent solutions from the target, sampled step by step
(one sampling call per step for all of them, so a live view sees steps),
and a vote over their answers weighted by the reward of each solution's last
step. Nothing is pruned and identical chains are kept, as each is a vote.
"""

from __future__ import annotations

from app.search.beam import grow
from app.search.context import SearchContext


def search(ctx: SearchContext) -> None:
    n = ctx.settings.n
    grow(ctx, "target", lambda beams, step: n if step == 0 else 1, keep=None, independent=True)
