"""Step operations every method is built from: draw candidates, drop
duplicates, judge, collect completions, and advance the kept ones to prefixes.

Each operation makes at most one call per model for the whole step (all
beams and candidates together) and emits the event that reports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from app.search.answer import Completion, last_boxed
from app.search.arithmetic import checked_reward, result_probability
from app.search.context import SearchContext
from app.search.events import (
    Candidate as CandidateInfo,
)
from app.search.events import (
    CandidateFates,
    CandidateScore,
    CandidatesDrafted,
    CandidatesScored,
    DraftProgress,
    Fate,
    Origin,
    StepAccepted,
    StepStarted,
)
from app.search.prefix import Candidate, Prefix
from engines.base import ProgressFn, RewardQuery, SampleParams, StopReason

# Seconds of the search clock between two DraftProgress events of one call:
# often enough for a live view, rare enough to keep traces small.
PROGRESS_INTERVAL = 0.1


def per_beam(n: int, beams: int) -> int:
    """Expansions per kept prefix so that a step has at least n candidates."""
    return math.ceil(n / beams)


def start_step(ctx: SearchContext, step: int, origin: Origin, beams: Sequence[Prefix]) -> None:
    ctx.check_stop()
    ctx.emit(StepStarted, step=step, origin=origin, parents=tuple(b.id for b in beams))


def _reporter(ctx: SearchContext, step: int, origin: Origin, ids: tuple[str, ...]) -> ProgressFn:
    last = -math.inf

    def report(groups: list[list[str]]) -> None:
        nonlocal last
        now = ctx.clock()
        if now - last < PROGRESS_INTERVAL:
            return
        last = now
        texts = tuple(text for group in groups for text in group)
        ctx.emit(DraftProgress, step=step, origin=origin, ids=ids, texts=texts)

    return report


def draw(
    ctx: SearchContext, step: int, role: Origin, beams: Sequence[Prefix], k: int, params: SampleParams
) -> list[Candidate]:
    """k candidates after each prefix from the `role` model, in one sampling call."""
    model = ctx.model(role)
    seqs = [ctx.sync(beam, role) for beam in beams]
    tag = "t" if role == "target" else ""
    ids = tuple(f"{step}.{tag}{i + 1}" for i in range(len(beams) * k))
    t0 = ctx.clock()
    drafts = model.sample(seqs, k, params, progress=_reporter(ctx, step, role, ids), should_stop=ctx.should_stop)
    candidates: list[Candidate] = []
    for beam, group in zip(beams, drafts):
        for draft in group:
            candidates.append(
                Candidate(
                    id=ids[len(candidates)],
                    parent=beam,
                    origin=role,
                    text=draft.text,
                    tokens=list(draft.tokens),
                    stop=draft.stop,
                    seqs={role: ctx.hold(role, draft.seq)},
                    logprobs={role: ctx.norm(draft.logprobs)},
                )
            )
            if role == "target":
                _check_results(ctx, candidates[-1], draft.logprobs)
    if role == "draft":
        ctx.counters.drafts_proposed += len(candidates)
    ctx.emit(
        CandidatesDrafted,
        step=step,
        origin=role,
        candidates=tuple(
            CandidateInfo(id=c.id, parent=c.parent.id, text=c.text, n_tokens=len(c.tokens), stop=c.stop.value)
            for c in candidates
        ),
        seconds=ctx.clock() - t0,
    )
    return candidates


def release(ctx: SearchContext, candidates: Iterable[Candidate]) -> None:
    for candidate in candidates:
        for seq in candidate.seqs.values():
            ctx.release(seq)
        candidate.seqs.clear()


def dedupe(ctx: SearchContext, candidates: Sequence[Candidate], fates: dict[str, Fate]) -> list[Candidate]:
    """The first candidate of each distinct solution text; later copies are released."""
    seen: set[str] = set()
    unique: list[Candidate] = []
    for candidate in candidates:
        if candidate.solution in seen:
            fates[candidate.id] = "duplicate"
            release(ctx, [candidate])
        else:
            seen.add(candidate.solution)
            unique.append(candidate)
    return unique


def target_logprobs(ctx: SearchContext, candidates: Sequence[Candidate]) -> None:
    """Teacher-force every candidate through the target in one call; keep the cached results."""
    if not candidates:
        return
    pairs = [(ctx.sync(c.parent, "target"), c.tokens) for c in candidates]
    scored = ctx.model("target").score(pairs, should_stop=ctx.should_stop)
    for candidate, result in zip(candidates, scored):
        candidate.seqs["target"] = ctx.hold("target", result.seq)
        candidate.logprobs["target"] = ctx.norm(result.logprobs)
        _check_results(ctx, candidate, result.logprobs)


def _check_results(ctx: SearchContext, candidate: Candidate, target_logprobs: Sequence[float]) -> None:
    if ctx.settings.result_check > 0:
        candidate.result_prob = result_probability(
            candidate.text, candidate.tokens, target_logprobs, ctx.model("target").detokenize
        )


def judge(ctx: SearchContext, candidates: Sequence[Candidate]) -> None:
    """The reward of every candidate's newest step, in one reward-model call."""
    if not candidates:
        return
    queries = [RewardQuery(ctx.question, c.parent.steps, c.text, policy_seq=c.seqs.get("target")) for c in candidates]
    rewards = ctx.engines.reward.score(queries, should_stop=ctx.should_stop)
    for candidate, reward in zip(candidates, rewards):
        candidate.reward = checked_reward(float(reward), candidate.result_prob, ctx.settings.result_check)


def report_scores(ctx: SearchContext, step: int, origin: Origin, candidates: Sequence[Candidate], t0: float) -> None:
    ctx.emit(
        CandidatesScored,
        step=step,
        origin=origin,
        scores=tuple(
            CandidateScore(
                id=c.id,
                reward=c.reward if c.reward is not None else 0.0,
                score=c.score,
                target_logprob=c.logprobs.get("target"),
                draft_logprob=c.logprobs.get("draft"),
                result_prob=c.result_prob,
            )
            for c in candidates
        ),
        seconds=ctx.clock() - t0,
    )


def completion_reason(candidate: Candidate, last: bool) -> str | None:
    """Why a candidate ends its solution, or None while it goes on."""
    if candidate.stop is StopReason.EOS or not candidate.text:
        return "eos"
    if last_boxed(candidate.text) is not None:
        return "boxed"
    if last and candidate.stop is StopReason.LENGTH:
        return "length"
    return None


def collect(ctx: SearchContext, step: int, candidates: Sequence[Candidate], fates: dict[str, Fate]) -> list[Candidate]:
    """Move completed candidates into the search's completions; the live rest."""
    live: list[Candidate] = []
    for candidate in candidates:
        reason = completion_reason(candidate, ctx.is_last(step))
        if reason is None:
            live.append(candidate)
            continue
        fates[candidate.id] = "completed"
        solution = candidate.solution
        completion = Completion(
            id=candidate.id,
            solution=solution,
            answer=last_boxed(solution),
            score=candidate.score,
            reward=candidate.reward if candidate.reward is not None else 0.0,
        )
        ctx.complete(step, completion, reason)
        release(ctx, [candidate])
    return live


def _number(candidate_id: str) -> int:
    return int(candidate_id.rsplit(".", 1)[1].lstrip("t"))


def report_fates(ctx: SearchContext, step: int, fates: dict[str, Fate]) -> None:
    if fates:
        ordered = {cid: fates[cid] for cid in sorted(fates, key=_number)}
        ctx.emit(CandidateFates, step=step, fates=ordered)


def advance(
    ctx: SearchContext, kept: Sequence[Candidate], dropped: Iterable[Candidate], parents: Sequence[Prefix]
) -> list[Prefix]:
    """Turn kept candidates into the next prefixes and release everything else.

    A kept candidate already has a cached sequence in the model(s) that
    produced or scored it. For any other role it inherits its parent's
    sequence (forked when siblings need it too) plus a lag of its own tokens,
    fed to that model only when it is next used.
    """
    release(ctx, dropped)
    children = [
        Prefix(
            id=c.id,
            steps=c.parent.steps + (c.text,),
            seqs=dict(c.seqs),
            score=c.score,
        )
        for c in kept
    ]
    for parent in parents:
        mine = [(c, child) for c, child in zip(kept, children) if c.parent is parent]
        for role, seq in parent.seqs.items():
            takers = [(c, child) for c, child in mine if role not in child.seqs]
            for i, (c, child) in enumerate(takers):
                last = i == len(takers) - 1
                model = ctx.model(role)
                child.seqs[role] = seq if last else ctx.hold(role, model.fork(seq))
                child.lag[role] = parent.lag.get(role, []) + c.tokens
            if not takers:
                ctx.release(seq)
        parent.seqs = {}
    for c in kept:
        c.seqs = {}
    ctx.beams = children
    return children


def accept(ctx: SearchContext, step: int, kept: Sequence[Candidate]) -> None:
    for c in kept:
        ctx.emit(StepAccepted, step=step, id=c.id, origin=c.origin, text=c.text, reward=c.reward, score=c.score)


def keep_single(
    ctx: SearchContext, step: int, candidate: Candidate, beams: Sequence[Prefix], fates: dict[str, Fate]
) -> list[Prefix]:
    """A one-candidate step: it completes the solution ([]) or becomes the next prefix."""
    live = collect(ctx, step, [candidate], fates)
    if live:
        fates[candidate.id] = "accepted"
    report_fates(ctx, step, fates)
    ctx.counters.step_done(candidate.origin)
    accept(ctx, step, live)
    return advance(ctx, live, [], beams)
