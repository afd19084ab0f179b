"""Reward-guided speculative decoding (RSD, Liao et al. 2025).

Each step the draft writes one candidate at settings.temperature and the
reward model judges it. A step whose reward is at least rsd_delta is kept;
otherwise it is deferred and the target writes the step instead (not judged,
as in RSD's code). Every step starts with the draft again.
"""

from __future__ import annotations

from app.search.context import SearchContext
from app.search.events import Deferred, Fate
from app.search.steps import draw, judge, keep_single, release, report_fates, report_scores, start_step


def search(ctx: SearchContext) -> None:
    s = ctx.settings
    beams = [ctx.start(("draft", "target"))]
    for step in range(s.max_steps):
        start_step(ctx, step, "draft", beams)
        fates: dict[str, Fate] = {}
        (draft,) = draw(ctx, step, "draft", beams, 1, ctx.sample_params(step, "draft"))
        t0 = ctx.clock()
        judge(ctx, [draft])
        reward = draft.reward or 0.0
        draft.score = reward
        report_scores(ctx, step, "draft", [draft], t0)
        if reward >= s.rsd_delta:
            beams = keep_single(ctx, step, draft, beams, fates)
        else:
            report_fates(ctx, step, {draft.id: "rejected"})
            ctx.emit(
                Deferred,
                step=step,
                reason=f"the draft step's reward {reward:.3g} is below rsd_delta {s.rsd_delta:g}",
                best_score=reward,
                threshold=s.rsd_delta,
            )
            ctx.counters.deferrals += 1
            release(ctx, [draft])
            start_step(ctx, step, "target", beams)
            (written,) = draw(ctx, step, "target", beams, 1, ctx.sample_params(step, "target"))
            written.score = written.logprobs["target"]
            beams = keep_single(ctx, step, written, beams, fates)
        if not beams:
            return
