"""Greedy decoding: one chain of thought from the target at temperature 0,
generated step by step so that readers still see steps. The reward model is
not consulted; a step's merit is its mean (or summed) target log-probability.
"""

from __future__ import annotations

from app.search.context import SearchContext
from app.search.steps import Step


def search(ctx: SearchContext) -> None:
    beams = [ctx.start(("target",))]
    for number in range(ctx.settings.max_steps):
        step = Step.begin(ctx, number, "target", beams)
        (candidate,) = step.draw(1, temperature=0.0)
        beams = step.keep(step.collect([candidate]))
        if not beams:
            return
