"""Reward models: text-level scorers of the newest step, built on LlamaModel.

Each kind turns (question, steps so far, candidate step) into a text whose next
token says how good the candidate is, and reads the reward off that next-token
distribution: P(good) / (P(good) + P(bad)).

- `TokenPRM`: RLHFlow's Llama3.1-8B-PRM format, a chat in which every step is
  a user turn answered "+" (good) or "-" (bad), rendered with the GGUF's chat
  template; the reward is P("+") at the newest assistant turn.
- `StepTagPRM`: Math-Shepherd's format, "question Step 1: ... ки\\nStep 2: ... ки";
  the reward is P("+") against P("-") right after the newest tag.
- `JudgeReward`: any instruction model asked whether the newest step is correct
  (the step alone after a few judged examples, or in the conversation);
  P(yes) against P(no), summed over the single-token spellings of each.

Tokenizers may differ from the draft's, so queries come as text. Each reward
keeps, per beam, a cached sequence whose tokens are the conversation so far:
a candidate then costs only its own tokens (candidates of one beam share their
prefix rows, see LlamaModel), and the scored candidate stays cached under
(question, steps + candidate), so once accepted it is the next step's prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from engines.base import SYSTEM_PROMPT, EngineError, ModelUsage, RewardQuery, StopFn, timed
from engines.llama import LlamaModel, LlamaSeq

Key = tuple[str, tuple[str, ...]]

# How the judge asks. Measured on Qwen2.5-Coder-1.5B over 10 pairs of a
# correct and a wrong step (wrong arithmetic or a misread number), pairs
# ranked right: this few-shot statement prompt 9/10 (AUC 0.63 over all
# rewards), the question after the solution in the conversation 5/10 (AUC
# 0.46); seven other wordings, in context or not, 5-9/10 (AUC 0.52-0.61).
# None separates by much at 1.5B; on short claims such as "2 + 2 = 5" this
# prompt does (0.99 against 0.19).
JUDGE_STATEMENT_PROMPT = (
    "Decide whether each statement is correct.\n\n"
    "Statement: 3 + 4 = 7.\nCorrect: Yes\n\n"
    "Statement: He pays 6 * 3 = 24 dollars.\nCorrect: No\n\n"
    "Statement: She has 10 - 4 = 6 apples left.\nCorrect: Yes\n\n"
    "Statement: 12 / 4 = 2.\nCorrect: No\n\n"
    "Statement: {statement}\nCorrect:"
)
JUDGE_QUESTION = "Check only the last step of the solution above. Is it correct? Answer Yes or No."
_YES = ("Yes", " Yes", "yes", " yes", "YES")
_NO = ("No", " No", "no", " no", "NO")
_SENTINEL = "\u2063SOLUTION\u2063"


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class _TextReward:
    """Shared machinery: prompts as text, per-beam cached prefixes, P(good)/(P(good)+P(bad))."""

    kind = ""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self.name = f"{self.kind}:{model.name}"
        self.usage = ModelUsage()
        self._cache: dict[Key, LlamaSeq] = {}
        self._good: list[int] = []
        self._bad: list[int] = []

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        """The text after which the next token judges steps[-1]."""
        raise NotImplementedError

    def reset(self) -> None:
        for seq in self._cache.values():
            self.model.release(seq)
        self._cache.clear()

    def score(self, queries: Sequence[RewardQuery], *, should_stop: StopFn | None = None) -> list[float]:
        with timed(self.usage):
            if not queries:
                return []
            logprobs, children = self.model.next_token_logprobs(
                self._pairs(queries, should_stop), self._good + self._bad, usage=self.usage, should_stop=should_stop
            )
            self._keep(queries, children)
            return [self._reward(row) for row in logprobs]

    def _reward(self, row: np.ndarray) -> float:
        good = np.logaddexp.reduce(row[: len(self._good)])
        bad = np.logaddexp.reduce(row[len(self._good) :])
        return float(1.0 / (1.0 + np.exp(bad - good)))

    def _pairs(self, queries: Sequence[RewardQuery], should_stop: StopFn | None) -> list[tuple[LlamaSeq, list[int]]]:
        """(cached prefix, remaining tokens) per query."""
        full = [self._tokens(q.question, q.steps + (q.candidate,)) for q in queries]
        by_key: dict[Key, list[list[int]]] = {}
        for q, tokens in zip(queries, full):
            by_key.setdefault((q.question, q.steps), []).append(tokens)
        prefixes: dict[Key, LlamaSeq] = {}
        try:
            for (question, steps), lists in by_key.items():
                # What all candidates of the beam share, and what an empty candidate
                # would: the conversation up to where the newest step's text begins.
                common = self._tokens(question, steps + ("",))
                for tokens in lists:
                    common = common[: _common_prefix_length(common, tokens)]
                prefixes[(question, steps)] = self._prefix((question, steps), common, should_stop)
        except BaseException:
            self._cache.update(prefixes)
            raise
        for key in [k for k in self._cache if k not in prefixes]:  # beams no longer searched
            self.model.release(self._cache.pop(key))
        self._cache.update(prefixes)
        pairs = []
        for q, tokens in zip(queries, full):
            base = self._cache[(q.question, q.steps)]
            pairs.append((base, tokens[base.n_tokens :]))
        return pairs

    def _prefix(self, key: Key, common: list[int], should_stop: StopFn | None) -> LlamaSeq:
        """A cached sequence for `key` whose tokens are a prefix of `common`."""
        cached = self._cache.pop(key, None)
        if cached is not None:
            shared = _common_prefix_length(cached.tokens, common)
            if shared == cached.n_tokens:
                return cached
            if shared > 0:
                self.model.truncate(cached, shared)
                return cached
            self.model.release(cached)
        # Borrow the start of the cached sequence that shares most (another
        # beam's conversation, or the same instructions).
        shared, donor = max(
            ((_common_prefix_length(seq.tokens, common), seq) for seq in self._cache.values()),
            key=lambda pair: pair[0],
            default=(0, None),
        )
        if donor is not None and shared > 0:
            seq = self.model.fork(donor)
            self.model.truncate(seq, shared)
            return seq
        if not common:
            raise EngineError(f"the reward prompt of {self.name} is empty.")
        return self.model.start(common, usage=self.usage, should_stop=should_stop)

    def _keep(self, queries: Sequence[RewardQuery], children: list[LlamaSeq]) -> None:
        for q, child in zip(queries, children):
            key = (q.question, q.steps + (q.candidate,))
            if key in self._cache or (q.policy_seq is not None and self._uses_policy(q)):
                self.model.release(child)
            else:
                self._cache[key] = child

    def _uses_policy(self, query: RewardQuery) -> bool:
        return False

    def _tokens(self, question: str, steps: Sequence[str]) -> list[int]:
        return self.model.prompt_tokens(self.prompt(question, steps))

    def _single_token(self, text: str) -> int:
        return self.model.tokenize(text)[-1]

    def _single_tokens(self, spellings: Sequence[str]) -> list[int]:
        ids = []
        for spelling in spellings:
            tokens = self.model.tokenize(spelling)
            if len(tokens) == 1 and tokens[0] not in ids:
                ids.append(tokens[0])
        return ids


class TokenPRM(_TextReward):
    """RLHFlow Llama3.1-8B-PRM style: each step a user turn, judged "+" or "-"."""

    kind = "token-prm"

    def __init__(self, model: LlamaModel) -> None:
        super().__init__(model)
        self._good, self._bad = [self._single_token("+")], [self._single_token("-")]

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        messages = []
        for i, step in enumerate(steps):
            content = f"{question} {step.strip()}" if i == 0 else step.strip()
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": "+"}]
        return self.model.render_chat(messages[:-1], add_generation_prompt=True)


class StepTagPRM(_TextReward):
    """Math-Shepherd style: steps end with the tag "ки"; P("+") after the newest tag."""

    kind = "step-tag-prm"
    TAG = "ки"

    def __init__(self, model: LlamaModel) -> None:
        super().__init__(model)
        self._good, self._bad = [self._single_token("+")], [self._single_token("-")]

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        solution = "\n".join(f"Step {i + 1}: {step.strip()} {self.TAG}" for i, step in enumerate(steps))
        return f"{question} {solution}"


class JudgeReward(_TextReward):
    """An instruction model asked whether the newest step is correct (Yes/No).

    style "statement" (the default, which separated best): the newest step
    alone after a few judged examples, so it checks the step's own claims
    (its arithmetic), not whether it follows from the problem.

    style "conversation": the solution so far as the assistant's turn, then
    the user asks about its last step. A query whose `policy_seq` lives in
    this judge's own model (the target judging its own candidates) then forks
    that sequence and appends only the question, a few tokens per candidate."""

    kind = "judge"

    def __init__(
        self,
        model: LlamaModel,
        *,
        style: str = "statement",
        system_prompt: str = SYSTEM_PROMPT,
        question: str = JUDGE_QUESTION,
    ) -> None:
        if style not in ("statement", "conversation"):
            raise ValueError(f"style must be 'statement' or 'conversation', not {style!r}")
        super().__init__(model)
        self.style = style
        self.system_prompt = system_prompt
        self.question = question
        self._good, self._bad = self._single_tokens(_YES), self._single_tokens(_NO)
        if not self._good or not self._bad:
            raise EngineError(f"{model.name} has no single-token Yes/No answers, so it cannot serve as a judge.")
        # The text between the solution and the judge's answer, for policy sequences.
        rendered = self._render("?", _SENTINEL)
        self._after_solution = self.model.tokenize(rendered[rendered.index(_SENTINEL) + len(_SENTINEL) :])

    def _render(self, question: str, solution: str) -> str:
        return self.model.render_chat(
            [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": question},
                {"role": "assistant", "content": solution},
                {"role": "user", "content": self.question},
            ],
            add_generation_prompt=True,
        )

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        if self.style == "statement":
            return JUDGE_STATEMENT_PROMPT.format(statement=steps[-1].strip())
        return self._render(question, "\n\n".join(step.strip() for step in steps))

    def _uses_policy(self, query: RewardQuery) -> bool:
        return (
            self.style == "conversation"
            and isinstance(query.policy_seq, LlamaSeq)
            and query.policy_seq._model is self.model
        )

    def _pairs(self, queries: Sequence[RewardQuery], should_stop: StopFn | None) -> list[tuple[LlamaSeq, list[int]]]:
        text_queries = [q for q in queries if not self._uses_policy(q)]
        text_pairs = iter(super()._pairs(text_queries, should_stop) if text_queries else [])
        return [
            (cast(LlamaSeq, q.policy_seq), self._after_solution) if self._uses_policy(q) else next(text_pairs)
            for q in queries
        ]


_KINDS = {"judge": JudgeReward, "token-prm": TokenPRM, "step-tag-prm": StepTagPRM}


def build_reward(kind: str, model: LlamaModel) -> _TextReward:
    """The reward model of a preset's `reward.kind` on a loaded model."""
    try:
        return _KINDS[kind](model)
    except KeyError:
        raise EngineError(f"unknown reward kind {kind!r}; use one of {', '.join(_KINDS)}.") from None
