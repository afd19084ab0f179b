"""A process reward model served by vLLM as a pooling model.

Qwen2.5-Math-PRM-7B is the model this is written for: vLLM serves it with the
pooling runner (`vllm serve Qwen/Qwen2.5-Math-PRM-7B --runner pooling`), and
its `/pooling` endpoint (task `token_classify`) returns, for each step tag
`<extra_0>` in the input, the model's two class probabilities [bad, good]
(vLLM 0.32 sets `step_tag_id` 151651 for this model itself; a server started
without it returns a row for every token, and the rows at the tags are used).
The conversation is the one the model card gives: the system prompt, the
question, and the steps joined and ended by the tag as the assistant's turn.
The reward of the newest step is the good-class probability of the last tag.

The text rewards of engines/reward.py (token PRM, step-tag PRM, judge) need
no pooling: they run on a RemoteModel as they run on a local one, reading
next-token log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.base import SYSTEM_PROMPT, ModelUsage, RewardQuery, ServerError, StopFn, timed
from engines.remote.model import RemoteModel

STEP_TAG = "<extra_0>"


class PooledPRM:
    """Rewards from a PRM served for pooling (implements `engines.base.RewardModel`)."""

    kind = "pooled-prm"

    def __init__(self, model: RemoteModel, *, step_tag: str = STEP_TAG, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.model = model
        self.name = f"{self.kind}:{model.name}"
        self.usage = ModelUsage()
        self.step_tag = step_tag
        self.system_prompt = system_prompt
        tag = model.tokenize(step_tag)
        if len(tag) != 1:
            raise ServerError(
                f"{model.name} has no single token for the step tag {step_tag!r}, so it is not a pooled PRM "
                "of the kind this reward reads (Qwen2.5-Math-PRM)."
            )
        self._tag = tag[0]

    def messages(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        solution = "".join(step.strip() + self.step_tag for step in steps)
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": solution},
        ]

    def reset(self) -> None:
        """Nothing is cached on the client; the server's prefix cache needs no reset."""

    def score(self, queries: Sequence[RewardQuery], *, should_stop: StopFn | None = None) -> list[float]:
        with timed(self.usage):
            if not queries:
                return []
            model = self.model
            inputs = model.chat_tokens(
                [self.messages(q.question, (*q.steps, q.candidate)) for q in queries],
                add_generation_prompt=False,
                usage=self.usage,
                should_stop=should_stop,
            )
            answers = model.post(
                [("pooling", {"model": model.served, "input": tokens, "task": "token_classify"}) for tokens in inputs],
                self.usage,
                root=True,
                should_stop=should_stop,
            )
            self.usage.prefilled += sum(len(t) for t in inputs)
            return [self._reward(tokens, answer) for tokens, answer in zip(inputs, answers)]

    def _reward(self, tokens: list[int], answer: dict[str, Any]) -> float:
        data = answer.get("data")
        rows = data[0].get("data") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
            raise ServerError(
                f"the server at {self.model.urls[0]} returned no pooled rows for {self.model.served}; "
                "serve the PRM with --runner pooling."
            )
        tags = [i for i, t in enumerate(tokens) if t == self._tag]
        if len(rows) == len(tokens) and len(rows) != len(tags):
            rows = [rows[i] for i in tags]  # a row per token: keep the tags' rows
        if not rows:
            raise ServerError(f"{self.model.served} returned no row for the step tag {self.step_tag!r}.")
        return float(rows[-1][-1])
