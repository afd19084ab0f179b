"""What one search run carries: models by role, settings, the event sink,
the sequences it holds, the solutions it completed, and its counters.

Every method receives a `SearchContext` and talks to models and readers only
through it, so bookkeeping (timestamps, stats, sequence ownership, seeds)
lives here once.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from app.search.answer import Completion, last_boxed, select
from app.search.events import (
    CandidateCompleted,
    Event,
    Finished,
    ModelStats,
    Origin,
    SearchStarted,
    Stats,
    Threshold,
)
from app.search.forced import force_answer
from app.search.prefix import Prefix
from app.search.settings import SearchSettings
from app.search.types import Engines
from engines.base import STEP_DELIMITER, SYSTEM_PROMPT, Cancelled, EngineError, LanguageModel, SampleParams, Seq, StopFn

E = TypeVar("E", bound=Event)
Clock = Callable[[], float]


@dataclass
class Counters:
    steps: int = 0
    draft_steps: int = 0
    target_steps: int = 0
    drafts_proposed: int = 0
    deferrals: int = 0
    switches: int = 0

    def step_done(self, origin: Origin) -> None:
        """One step index is decided (accepted or completed), by `origin`."""
        self.steps += 1
        if origin == "draft":
            self.draft_steps += 1
        else:
            self.target_steps += 1


@dataclass
class SearchContext:
    method: str
    question: str
    engines: Engines
    settings: SearchSettings
    sink: Callable[[Event], None]
    should_stop: StopFn | None
    clock: Clock
    # The method's thresholds at this run's settings (registry, SearchStarted).
    thresholds: tuple[Threshold, ...] = ()
    rng: random.Random = field(init=False)
    counters: Counters = field(default_factory=Counters)
    completed: list[Completion] = field(default_factory=list)
    # The live prefixes of the method; the answer when a search is cut short.
    beams: list[Prefix] = field(default_factory=list)
    # True once the prompt is prefilled: a full context after that ends the
    # search with what it has instead of failing it.
    started: bool = False
    _held: dict[int, tuple[LanguageModel, Seq]] = field(default_factory=dict)
    _unboxed: dict[str, Seq | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)
        self._t0 = self.clock()
        self._usage0 = {role: model.usage.snapshot() for role, model in self._models_with_reward().items()}

    # -- models and sequences ----------------------------------------------------

    def _models_with_reward(self) -> dict[str, Any]:
        models: dict[str, Any] = {"target": self.engines.target, "reward": self.engines.reward}
        if self.engines.draft is not None:
            models["draft"] = self.engines.draft
        return models

    def model(self, role: str) -> LanguageModel:
        model = self.engines.draft if role == "draft" else self.engines.target
        assert model is not None, "run() checks that methods needing a draft have one"
        return model

    def hold(self, role: str, seq: Seq) -> Seq:
        """Record that this search owns `seq` (released at the latest when it ends)."""
        self._held[id(seq)] = (self.model(role), seq)
        return seq

    def release(self, seq: Seq) -> None:
        model, _ = self._held.pop(id(seq))
        model.release(seq)

    def release_all(self) -> None:
        while self._held:
            _, (model, seq) = self._held.popitem()
            model.release(seq)

    def start(self, roles: tuple[str, ...]) -> Prefix:
        """Prefill the chat prompt on each role's model: the root prefix.

        The target's chat template serves both models, as the draft and the
        target must share a tokenizer (the official code uses one template too).
        """
        self.engines.reward.reset()
        if getattr(self.engines.reward, "reads_policy_states", False) and "target" not in roles:
            roles = (*roles, "target")  # a value head reads every step through the target
        prompt = self.engines.target.format_chat(SYSTEM_PROMPT, self.question)
        seqs = {role: self.hold(role, self.model(role).start(prompt, should_stop=self.should_stop)) for role in roles}
        root = Prefix(id="", steps=(), seqs=seqs)
        self.beams = [root]
        self.started = True
        return root

    def sync(self, prefix: Prefix, role: str) -> Seq:
        """The prefix's sequence in `role`, first fed the steps it has not seen yet."""
        seq = prefix.seqs[role]
        lag = prefix.lag.get(role)
        if lag:
            self.model(role).extend(seq, lag, should_stop=self.should_stop)
        prefix.lag.pop(role, None)
        return seq

    # -- events ----------------------------------------------------------------

    def emit(self, cls: type[E], **fields: Any) -> E:
        event = cls(t=self.clock(), **fields)
        self.sink(event)
        return event

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()

    def search_started(self) -> None:
        names = {role: model.name for role, model in self._models_with_reward().items()}
        self.emit(
            SearchStarted,
            method=self.method,
            question=self.question,
            settings=self.settings.model_dump(),
            models=names,
            thresholds=self.thresholds,
        )

    def threshold(self, name: str) -> Threshold:
        return next(t for t in self.thresholds if t.name == name)

    # -- sampling ------------------------------------------------------------------

    def is_last(self, step: int) -> bool:
        return step == self.settings.max_steps - 1

    def sample_params(self, step: int, salt: str, *, temperature: float | None = None) -> SampleParams:
        """Parameters for one sampling call; the seed depends on (settings.seed, step, salt) only."""
        seed = zlib.crc32(f"{self.settings.seed}:{step}:{salt}".encode()) & 0x7FFFFFFF
        return SampleParams(
            temperature=self.settings.temperature if temperature is None else temperature,
            top_p=self.settings.top_p,
            max_tokens=self.settings.max_step_tokens,
            seed=seed,
            delimiter=None if self.is_last(step) else STEP_DELIMITER,
        )

    def norm(self, logprobs: list[float]) -> float:
        """A step's log-probability, averaged per token or summed (settings.logprob_norm)."""
        if not logprobs:
            return 0.0
        # float(): engines may hand back numpy scalars; events carry plain floats.
        total = float(sum(logprobs))
        return total if self.settings.logprob_norm == "sum" else total / len(logprobs)

    # -- the end -------------------------------------------------------------------

    def complete(self, step: int, completion: Completion, reason: str) -> None:
        self.completed.append(completion)
        self.emit(
            CandidateCompleted,
            step=step,
            id=completion.id,
            solution=completion.solution,
            answer=completion.answer,
            reason=reason,
            reward=completion.reward,
            tilted=completion.tilted,
            logprob=completion.logprob,
        )

    def stats(self) -> Stats:
        models = {}
        for role, model in self._models_with_reward().items():
            used = model.usage.since(self._usage0[role])
            models[role] = ModelStats(
                seconds=used.seconds,
                native_seconds=used.native_seconds,
                generated=used.generated,
                prefilled=used.prefilled,
            )
        c = self.counters
        return Stats(
            wall_seconds=self.clock() - self._t0,
            models=models,
            steps=c.steps,
            draft_steps=c.draft_steps,
            target_steps=c.target_steps,
            drafts_proposed=c.drafts_proposed,
            deferrals=c.deferrals,
            switches=c.switches,
            completed=len(self.completed),
        )

    def finish(self, *, vote: bool = False, cancelled: bool = False, error: str | None = None) -> Finished:
        """Release every sequence, choose the answer and emit `Finished`.

        Without a completed solution (a search cut short) the best live prefix
        is the solution.
        """
        forced = False
        try:
            if self.completed:
                chosen = select(self.completed, self.settings, vote=vote)
                solution, answer = chosen.solution, chosen.answer
                if answer is None and not cancelled and error is None:
                    solution, answer, forced = self._force_answer(chosen.id, solution)
            else:
                best = max(self.beams, key=lambda p: p.merit, default=None)
                solution = best.text if best is not None else ""
                answer = last_boxed(solution)
        finally:
            self.release_all()
        stats = replace(self.stats(), answer_forced=forced)
        return self.emit(Finished, answer=answer, solution=solution, stats=stats, cancelled=cancelled, error=error)

    def keep_for_answer(self, completion_id: str, target_seq: Seq | None) -> None:
        """A completion without a box: keep its target sequence (already held)
        until the end, in case it is chosen and its box must be asked for."""
        self._unboxed[completion_id] = target_seq

    def _force_answer(self, completion_id: str, solution: str) -> tuple[str, str | None, bool]:
        """The chosen solution has no box: the target writes it (see forced.py).
        Counted in the target's time like any of its calls."""
        target = self.engines.target
        seq = self._unboxed.get(completion_id)
        try:
            if seq is None:  # a draft-only solution: the target reads it first
                prompt = target.format_chat(SYSTEM_PROMPT, self.question)
                seq = self.hold("target", target.start(prompt, should_stop=self.should_stop))
                target.extend(seq, target.tokenize(solution), should_stop=self.should_stop)
            forced = force_answer(target, seq, should_stop=self.should_stop)
        except (Cancelled, EngineError):
            return solution, None, False
        if forced.answer is None:
            return solution, None, False
        return solution + forced.text, forced.answer, True
