"""Reward-guided speculative decoding (RSD, Liao et al. 2025).

Each step the draft writes one candidate at settings.temperature and the
reward model judges it. A step whose reward is at least rsd_delta is kept;
otherwise it is deferred and the target writes the step instead (not judged,
as in RSD's code). Every step starts with the draft again.
"""

from __future__ import annotations

from app.search.context import SearchContext
from app.search.steps import Step


def search(ctx: SearchContext) -> None:
    s = ctx.settings
    beams = [ctx.start(("draft", "target"))]
    for number in range(s.max_steps):
        step = Step.begin(ctx, number, "draft", beams)
        (draft,) = step.draw(1)
        step.reward([draft])
        if draft.reward >= s.rsd_delta:
            beams = step.keep(step.collect([draft]))
        else:
            step.defer([draft], best=draft.reward, threshold="rsd_delta")
            step = Step.begin(ctx, number, "target", beams)
            (written,) = step.draw(1)
            beams = step.keep(step.collect([written]))
        if not beams:
            return
