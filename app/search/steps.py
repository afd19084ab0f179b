"""One step of a search: the operations every method is built from.

A method opens a `Step` for each step index and origin, and says what it
decides: draw candidates, dedupe them, teacher-force them through the target,
reward them, collect the completed ones, then defer the step or keep some
candidates as the next prefixes. The step owns the bookkeeping of that
sentence: the fate of every candidate, the time its models take, the events
that report all of it, the search's counters, and the sequences it holds.

Each operation makes at most one call per model for the whole step (all
beams and candidates together).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from app.search.answer import Completion, last_boxed
from app.search.arithmetic import checked_reward, result_probability
from app.search.context import SearchContext
from app.search.equations import false_equations
from app.search.events import (
    BeamPruned,
    CandidateFates,
    CandidateScore,
    CandidatesDrafted,
    CandidatesScored,
    Deferred,
    DraftProgress,
    Fate,
    Origin,
    StepAccepted,
    StepStarted,
    SwitchedToDraft,
)
from app.search.events import (
    Candidate as CandidateInfo,
)
from app.search.prefix import Candidate, Prefix
from engines.base import ProgressFn, RewardQuery, StopReason

# Seconds of the search clock between two DraftProgress events of one call:
# often enough for a live view, rare enough to keep traces small.
PROGRESS_INTERVAL = 0.1


def per_beam(n: int, beams: int) -> int:
    """Expansions per kept prefix so that a step has at least n candidates."""
    return math.ceil(n / beams)


class Step:
    """Step `number` of a search, its candidates written by the `origin` model
    after the prefixes `beams`. Open one with `Step.begin`."""

    def __init__(self, ctx: SearchContext, number: int, origin: Origin, beams: Sequence[Prefix]) -> None:
        self.ctx = ctx
        self.number = number
        self.origin = origin
        self.beams = list(beams)
        self.fates: dict[str, Fate] = {}
        self._judged: list[Candidate] = []
        self._judging_since: float | None = None  # the clock when teacher forcing or rewarding began

    @classmethod
    def begin(cls, ctx: SearchContext, number: int, origin: Origin, beams: Sequence[Prefix]) -> Step:
        """Stop here if asked to; otherwise announce the step."""
        ctx.check_stop()
        ctx.emit(StepStarted, step=number, origin=origin, parents=tuple(b.id for b in beams))
        return cls(ctx, number, origin, beams)

    # -- the operations ---------------------------------------------------------------

    def draw(self, k: int, *, temperature: float | None = None) -> list[Candidate]:
        """k candidates after each prefix from the step's model, in one sampling call."""
        ctx, role = self.ctx, self.origin
        params = ctx.sample_params(self.number, role, temperature=temperature)
        seqs = [ctx.sync(beam, role) for beam in self.beams]
        tag = "t" if role == "target" else ""
        ids = tuple(f"{self.number}.{tag}{i + 1}" for i in range(len(self.beams) * k))
        t0 = ctx.clock()
        drafts = ctx.model(role).sample(seqs, k, params, progress=self._reporter(ids), should_stop=ctx.should_stop)
        candidates: list[Candidate] = []
        for beam, group in zip(self.beams, drafts):
            for draft in group:
                candidate = Candidate(
                    id=ids[len(candidates)],
                    parent=beam,
                    origin=role,
                    text=draft.text,
                    tokens=list(draft.tokens),
                    stop=draft.stop,
                    seqs={role: ctx.hold(role, draft.seq)},
                    logprobs={role: ctx.norm(draft.logprobs)},
                )
                if role == "target":
                    self._check_results(candidate, draft.logprobs)
                    candidate.state = draft.hidden
                candidates.append(candidate)
        if role == "draft":
            ctx.counters.drafts_proposed += len(candidates)
        ctx.emit(
            CandidatesDrafted,
            step=self.number,
            origin=role,
            candidates=tuple(
                CandidateInfo(id=c.id, parent=c.parent.id, text=c.text, n_tokens=len(c.tokens), stop=c.stop.value)
                for c in candidates
            ),
            seconds=ctx.clock() - t0,
        )
        return candidates

    def dedupe(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The first candidate of each distinct solution text; later copies are released."""
        seen: set[str] = set()
        unique: list[Candidate] = []
        for candidate in candidates:
            if candidate.solution in seen:
                self.fates[candidate.id] = "duplicate"
                self._release([candidate])
            else:
                seen.add(candidate.solution)
                unique.append(candidate)
        return unique

    def teacher_force(self, candidates: Sequence[Candidate]) -> None:
        """The target's log-probability of every candidate, in one call; the scored
        sequences stay cached, so a kept candidate is the target's next prefix."""
        self._judging(candidates)
        if not candidates:
            return
        ctx = self.ctx
        pairs = [(ctx.sync(c.parent, "target"), c.tokens) for c in candidates]
        forced = ctx.model("target").score(pairs, should_stop=ctx.should_stop)
        for candidate, result in zip(candidates, forced):
            candidate.seqs["target"] = ctx.hold("target", result.seq)
            candidate.logprobs["target"] = ctx.norm(result.logprobs)
            candidate.state = result.hidden
            self._check_results(candidate, result.logprobs)

    def reward(self, candidates: Sequence[Candidate]) -> None:
        """The reward of every candidate's newest step, in one reward-model call
        (scaled down where the target doubts a result, see arithmetic.py, and
        0 for a step that writes a false equation, see equations.py)."""
        self._judging(candidates)
        if not candidates:
            return
        ctx = self.ctx
        if getattr(ctx.engines.reward, "reads_policy_states", False):
            # A value head reads the target's state at each step end: steps the
            # target has not read yet (a draft-only method's) are read first.
            unread = [c for c in candidates if c.state is None and "target" not in c.seqs]
            if unread:
                self.teacher_force(unread)
        queries = [
            RewardQuery(ctx.question, c.parent.steps, c.text, policy_seq=c.seqs.get("target"), policy_state=c.state)
            for c in candidates
        ]
        rewards = ctx.engines.reward.score(queries, should_stop=ctx.should_stop)
        for candidate, reward in zip(candidates, rewards):
            candidate.reward = checked_reward(float(reward), candidate.result_prob, ctx.settings.result_check)
            if ctx.settings.equation_check:
                wrong = false_equations(candidate.text)
                if wrong:
                    candidate.false_equation = str(wrong[0])
                    candidate.reward = 0.0
            candidate.judged = True

    def collect(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Move the candidates that end their solution into the search's
        completions; the live rest. The step's judgements are final here, so
        they are reported first."""
        self._report_judgements()
        live: list[Candidate] = []
        for candidate in candidates:
            reason = completion_reason(candidate, self.ctx.is_last(self.number))
            if reason is None:
                live.append(candidate)
                continue
            self.fates[candidate.id] = "completed"
            solution = candidate.solution
            completion = Completion(
                id=candidate.id,
                solution=solution,
                answer=last_boxed(solution),
                reward=candidate.judged_reward,
                tilted=candidate.tilted_or_none,
                logprob=candidate.logprob,
            )
            self.ctx.complete(self.number, completion, reason)
            if completion.answer is None:
                self.ctx.keep_for_answer(candidate.id, candidate.seqs.pop("target", None))
            self._release([candidate])
        return live

    def defer(self, rejected: Sequence[Candidate], *, best: float, threshold: str) -> None:
        """No candidate passed the setting `threshold`: reject them all and hand
        the step to the target (`best` is the closest they came)."""
        self._report_judgements()
        self.fates.update({c.id: "rejected" for c in rejected})
        self._report_fates()
        check = self.ctx.settings.result_check
        doubted = [c.result_prob for c in rejected if c.result_prob is not None and c.result_prob < check]
        false = [c.false_equation for c in rejected if c.false_equation is not None]
        self.ctx.emit(
            Deferred,
            step=self.number,
            best=best,
            threshold=self.ctx.threshold(threshold),
            drafts=len(rejected),
            doubted=len(doubted),
            lowest_result_prob=min(doubted, default=None),
            false_equations=len(false),
            false_equation=false[0] if false else None,
        )
        self.ctx.counters.deferrals += 1
        self._release(rejected)

    def keep(
        self,
        kept: Sequence[Candidate],
        *,
        pruned: Sequence[Candidate] = (),
        rejected: Sequence[Candidate] = (),
        announce_pruned: bool = False,
    ) -> list[Prefix]:
        """Accept `kept` as the next prefixes ([] when the step completed the
        solutions) and release the candidates pruned (good enough, not chosen)
        or rejected; `announce_pruned` also reports the pruning as BeamPruned."""
        self._report_judgements()
        self.fates.update({c.id: "accepted" for c in kept})
        self.fates.update({c.id: "pruned" for c in pruned})
        self.fates.update({c.id: "rejected" for c in rejected})
        self._report_fates()
        if announce_pruned and pruned:
            self.ctx.emit(
                BeamPruned, step=self.number, kept=tuple(c.id for c in kept), pruned=tuple(c.id for c in pruned)
            )
        for c in kept:
            self.ctx.emit(
                StepAccepted,
                step=self.number,
                id=c.id,
                origin=c.origin,
                text=c.text,
                reward=c.judged_reward,
                tilted=c.tilted_or_none,
                logprob=c.logprob,
            )
        self.ctx.counters.step_done(self.origin)
        return self._advance(kept, [*pruned, *rejected])

    def switch_to_draft(self, reward: float, *, threshold: str) -> None:
        """A kept target step's reward passed the setting `threshold`: the next step goes back to the draft."""
        self.ctx.emit(SwitchedToDraft, step=self.number, reward=reward, threshold=self.ctx.threshold(threshold))
        self.ctx.counters.switches += 1

    # -- bookkeeping ----------------------------------------------------------------------

    def _reporter(self, ids: tuple[str, ...]) -> ProgressFn:
        last = -math.inf

        def report(groups: list[list[str]]) -> None:
            nonlocal last
            now = self.ctx.clock()
            if now - last < PROGRESS_INTERVAL:
                return
            last = now
            texts = tuple(text for group in groups for text in group)
            self.ctx.emit(DraftProgress, step=self.number, origin=self.origin, ids=ids, texts=texts)

        return report

    def _check_results(self, candidate: Candidate, target_logprobs: Sequence[float]) -> None:
        if self.ctx.settings.result_check > 0:
            candidate.result_prob = result_probability(
                candidate.text, candidate.tokens, target_logprobs, self.ctx.model("target").detokenize
            )

    def _judging(self, candidates: Sequence[Candidate]) -> None:
        if self._judging_since is None:
            self._judging_since = self.ctx.clock()
        known = {c.id for c in self._judged}
        self._judged += [c for c in candidates if c.id not in known]

    def _report_judgements(self) -> None:
        """One CandidatesScored for the step, once, if any model judged its candidates."""
        if self._judging_since is None:
            return
        self.ctx.emit(
            CandidatesScored,
            step=self.number,
            origin=self.origin,
            scores=tuple(
                CandidateScore(
                    id=c.id,
                    reward=c.reward,
                    tilted=c.tilted_or_none,
                    target_logprob=c.logprobs.get("target"),
                    draft_logprob=c.logprobs.get("draft"),
                    result_prob=c.result_prob,
                    false_equation=c.false_equation,
                )
                for c in self._judged
            ),
            seconds=self.ctx.clock() - self._judging_since,
        )
        self._judging_since = None

    def _report_fates(self) -> None:
        if self.fates:
            ordered = {cid: self.fates[cid] for cid in sorted(self.fates, key=_number)}
            self.ctx.emit(CandidateFates, step=self.number, fates=ordered)

    def _release(self, candidates: Iterable[Candidate]) -> None:
        for candidate in candidates:
            for seq in candidate.seqs.values():
                self.ctx.release(seq)
            candidate.seqs.clear()

    def _advance(self, kept: Sequence[Candidate], dropped: Iterable[Candidate]) -> list[Prefix]:
        """Turn kept candidates into the next prefixes and release everything else.

        A kept candidate already has a cached sequence in the model(s) that
        produced or teacher-forced it. For any other role it inherits its parent's
        sequence (forked when siblings need it too) plus a lag of its own
        tokens, fed to that model only when it is next used.
        """
        ctx = self.ctx
        self._release(dropped)
        children = [Prefix(id=c.id, steps=c.parent.steps + (c.text,), seqs=dict(c.seqs), merit=c.merit) for c in kept]
        for parent in self.beams:
            mine = [(c, child) for c, child in zip(kept, children) if c.parent is parent]
            for role, seq in parent.seqs.items():
                takers = [(c, child) for c, child in mine if role not in child.seqs]
                for i, (c, child) in enumerate(takers):
                    last = i == len(takers) - 1
                    child.seqs[role] = seq if last else ctx.hold(role, ctx.model(role).fork(seq))
                    child.lag[role] = parent.lag.get(role, []) + c.tokens
                if not takers:
                    ctx.release(seq)
            parent.seqs = {}
        for c in kept:
            c.seqs = {}
        ctx.beams = children
        return children


def completion_reason(candidate: Candidate, last: bool) -> str | None:
    """Why a candidate ends its solution, or None while it goes on."""
    if candidate.stop is StopReason.EOS or not candidate.text:
        return "eos"
    if last_boxed(candidate.text) is not None:
        return "boxed"
    if last and candidate.stop is StopReason.LENGTH:
        return "length"
    return None


def _number(candidate_id: str) -> int:
    return int(candidate_id.rsplit(".", 1)[1].lstrip("t"))
