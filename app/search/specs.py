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
last step) are collected with their tilted score even when the step is
rejected, as in the official code; the best of them by that score is the
answer. Deviation, so that completions from both phases compare on one
scale: a target candidate's tilted score is beta * reward (the target is its
own reference), where the official code stores the raw reward.

Each step reads as the paper's Algorithm 1; the bookkeeping (fates, events,
timing, counters, sequences) is the `Step`'s (app/search/steps.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from app.search.context import SearchContext
from app.search.prefix import Prefix
from app.search.steps import Step, per_beam


def softmax_choice(values: Sequence[float], temperature: float, k: int, rng: random.Random) -> list[int]:
    """k distinct indices, each drawn from softmax(value / T) over those not drawn yet.

    T = 0 takes the k best (the earliest on ties).
    """
    remaining = list(range(len(values)))
    if temperature <= 0:
        return sorted(remaining, key=lambda i: -values[i])[:k]
    chosen: list[int] = []
    while remaining and len(chosen) < k:
        top = max(values[i] for i in remaining)
        weights = [math.exp((values[i] - top) / temperature) for i in remaining]
        pick = rng.choices(remaining, weights=weights)[0]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


def _draft_step(ctx: SearchContext, number: int, beams: list[Prefix]) -> list[Prefix] | None:
    """Soft verification of the draft's candidates.

    Returns the next prefixes ([] when every candidate completed), or None
    when no draft passes and the step is deferred to the target.
    """
    s = ctx.settings
    step = Step.begin(ctx, number, "draft", beams)
    drafts = step.dedupe(step.draw(per_beam(s.n, len(beams))))
    step.teacher_force(drafts)
    step.reward(drafts)
    for c in drafts:
        c.tilted = (c.logprobs["target"] - c.logprobs["draft"]) + s.beta * c.reward
    live = step.collect(drafts)
    if not live:
        return step.keep([])
    passing = [c for c in live if c.tilted > s.tau_accept]
    if not passing:
        step.defer(live, best=max(c.tilted for c in live), threshold="tau_accept")
        return None
    picks = softmax_choice([c.tilted for c in passing], s.temperature, s.beam_width, ctx.rng)
    kept = [passing[i] for i in picks]
    return step.keep(kept, pruned=[c for c in passing if c not in kept], rejected=[c for c in live if c not in passing])


def _target_step(ctx: SearchContext, number: int, beams: list[Prefix]) -> tuple[list[Prefix], bool]:
    """The target writes the step.

    Returns the next prefixes ([] when every candidate completed) and whether
    the next step goes back to the draft.
    """
    s = ctx.settings
    step = Step.begin(ctx, number, "target", beams)
    candidates = step.dedupe(step.draw(per_beam(s.n, len(beams))))
    step.reward(candidates)
    for c in candidates:
        c.tilted = s.beta * c.reward  # the target is its own reference: no log-ratio
    live = step.collect(candidates)
    if not live:
        return step.keep([]), False
    ranked = sorted(live, key=lambda c: -c.reward)
    kept = step.keep(ranked[: s.beam_width], pruned=ranked[s.beam_width :])
    switch = ranked[0].reward > s.tau_switch
    if switch:
        step.switch_to_draft(ranked[0].reward, threshold="tau_switch")
    return kept, switch


def search(ctx: SearchContext) -> None:
    beams = [ctx.start(("target", "draft"))]
    use_draft = not ctx.settings.first_step_target
    for number in range(ctx.settings.max_steps):
        accepted = _draft_step(ctx, number, beams) if use_draft else None
        if accepted is None:
            accepted, use_draft = _target_step(ctx, number, beams)
        if not accepted:
            return
        beams = accepted
