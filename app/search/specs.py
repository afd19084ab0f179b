"""SPECS: speculative drafts with reward-guided soft verification and
reward-based deferral (arXiv 2506.15733), as the official code runs it.

Each step the draft proposes n continuations of the kept prefix. The target
teacher-forces them (one call) and the reward model judges them (one call);
a draft's tilted score is

    s = (log p_target - log p_draft) + beta * reward

(log-probabilities averaged per token, or summed with logprob_norm="sum").
Drafts with s > tau_accept pass; one of them is kept with probability
softmax(s / T) over those that pass (the sampling temperature T is reused,
as in the official code; T = 0 takes the best). If none passes, the step is
deferred: the target samples n candidates and the one with the highest
reward is kept; the search returns to the draft at the next step when a
target candidate's reward exceeds tau_switch. The first step comes from the
target (first_step_target). With beam_width m > 1, m prefixes survive each
step, drawn without replacement from the same softmax over the passing
drafts of all beams (each beam gets ceil(n/m) drafts).

Completed candidates (EOS, a \\boxed{} answer in the step, the cap of the
last step) are collected with their score even when the step is rejected, as
in the official code. Deviation, so that completions from both phases
compare on one scale: a target candidate's score is beta * reward (its
tilted score with the target as its own reference), where the official code
stores the raw reward.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from app.search.context import SearchContext
from app.search.events import Deferred, Fate, SwitchedToDraft
from app.search.prefix import Prefix
from app.search.steps import (
    accept,
    advance,
    collect,
    dedupe,
    draw,
    judge,
    per_beam,
    release,
    report_fates,
    report_scores,
    start_step,
    target_logprobs,
)


def softmax_choice(scores: Sequence[float], temperature: float, k: int, rng: random.Random) -> list[int]:
    """k distinct indices, each drawn from softmax(score / T) over those not drawn yet.

    T = 0 takes the k best (the earliest on ties).
    """
    remaining = list(range(len(scores)))
    if temperature <= 0:
        return sorted(remaining, key=lambda i: -scores[i])[:k]
    chosen: list[int] = []
    while remaining and len(chosen) < k:
        top = max(scores[i] for i in remaining)
        weights = [math.exp((scores[i] - top) / temperature) for i in remaining]
        pick = rng.choices(remaining, weights=weights)[0]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


def _draft_step(ctx: SearchContext, step: int, beams: list[Prefix]) -> list[Prefix] | None:
    """Soft verification of the draft's candidates.

    Returns the next prefixes ([] when every candidate completed), or None
    when no draft passes and the step is deferred to the target.
    """
    s = ctx.settings
    start_step(ctx, step, "draft", beams)
    fates: dict[str, Fate] = {}
    drafted = draw(ctx, step, "draft", beams, per_beam(s.n, len(beams)), ctx.sample_params(step, "draft"))
    candidates = dedupe(ctx, drafted, fates)
    t0 = ctx.clock()
    target_logprobs(ctx, candidates)
    judge(ctx, candidates)
    for c in candidates:
        c.score = (c.logprobs["target"] - c.logprobs["draft"]) + s.beta * (c.reward or 0.0)
    report_scores(ctx, step, "draft", candidates, t0)
    live = collect(ctx, step, candidates, fates)
    if not live:
        report_fates(ctx, step, fates)
        ctx.counters.step_done("draft")
        return advance(ctx, [], [], beams)
    passing = [c for c in live if c.score > s.tau_accept]
    if not passing:
        fates.update({c.id: "rejected" for c in live})
        report_fates(ctx, step, fates)
        best = max(c.score for c in live)
        reason = f"the best draft scored {best:.3g}, not above tau_accept {s.tau_accept:g}"
        doubted = [c for c in live if c.result_prob is not None and c.result_prob < s.result_check]
        if doubted:
            worst = min(c.result_prob or 0.0 for c in doubted)
            reason += f"; the target doubted a result in {len(doubted)} of {len(live)} (p = {worst:.2g})"
        ctx.emit(
            Deferred,
            step=step,
            reason=reason,
            best_score=best,
            threshold=s.tau_accept,
        )
        ctx.counters.deferrals += 1
        release(ctx, live)
        return None
    picks = softmax_choice([c.score for c in passing], s.temperature, s.beam_width, ctx.rng)
    kept = [passing[i] for i in picks]
    kept_ids = {c.id for c in kept}
    for c in live:
        fates[c.id] = "accepted" if c.id in kept_ids else "pruned" if c.score > s.tau_accept else "rejected"
    report_fates(ctx, step, fates)
    accept(ctx, step, kept)
    ctx.counters.step_done("draft")
    return advance(ctx, kept, [c for c in live if c.id not in kept_ids], beams)


def _target_step(ctx: SearchContext, step: int, beams: list[Prefix]) -> tuple[list[Prefix], bool]:
    """The target writes the step.

    Returns the next prefixes ([] when every candidate completed) and whether
    the next step goes back to the draft.
    """
    s = ctx.settings
    start_step(ctx, step, "target", beams)
    fates: dict[str, Fate] = {}
    drafted = draw(ctx, step, "target", beams, per_beam(s.n, len(beams)), ctx.sample_params(step, "target"))
    candidates = dedupe(ctx, drafted, fates)
    t0 = ctx.clock()
    judge(ctx, candidates)
    for c in candidates:
        c.score = s.beta * (c.reward or 0.0)
    report_scores(ctx, step, "target", candidates, t0)
    live = collect(ctx, step, candidates, fates)
    ctx.counters.step_done("target")
    if not live:
        report_fates(ctx, step, fates)
        return advance(ctx, [], [], beams), False
    ranked = sorted(live, key=lambda c: -(c.reward or 0.0))
    kept, dropped = ranked[: s.beam_width], ranked[s.beam_width :]
    fates.update({c.id: "accepted" for c in kept})
    fates.update({c.id: "pruned" for c in dropped})
    report_fates(ctx, step, fates)
    accept(ctx, step, kept)
    best_reward = ranked[0].reward or 0.0
    switch = best_reward > s.tau_switch
    if switch:
        ctx.emit(SwitchedToDraft, step=step, reward=best_reward, threshold=s.tau_switch)
        ctx.counters.switches += 1
    return advance(ctx, kept, dropped, beams), switch


def search(ctx: SearchContext) -> None:
    beams = [ctx.start(("target", "draft"))]
    use_draft = not ctx.settings.first_step_target
    for step in range(ctx.settings.max_steps):
        accepted = _draft_step(ctx, step, beams) if use_draft else None
        if accepted is None:
            accepted, use_draft = _target_step(ctx, step, beams)
        if not accepted:
            return
        beams = accepted
