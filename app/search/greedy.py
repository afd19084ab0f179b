"""Greedy decoding: one chain of thought from the target at temperature 0,
generated step by step so that readers still see steps. The reward model is
not consulted; a step's score is its mean (or summed) target log-probability.
"""

from __future__ import annotations

from app.search.context import SearchContext
from app.search.events import Fate
from app.search.steps import draw, keep_single, start_step


def search(ctx: SearchContext) -> None:
    beams = [ctx.start(("target",))]
    for step in range(ctx.settings.max_steps):
        start_step(ctx, step, "target", beams)
        fates: dict[str, Fate] = {}
        params = ctx.sample_params(step, "target", temperature=0.0)
        (candidate,) = draw(ctx, step, "target", beams, 1, params)
        candidate.score = candidate.logprobs["target"]
        beams = keep_single(ctx, step, candidate, beams, fates)
        if not beams:
            return
