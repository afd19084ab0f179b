"""One search's events as a chat reply.

The accepted steps are the reasoning, streamed as they are accepted. The
content is the step that completed the chosen solution (its `\\boxed{}`
kept, or the box the target was asked for when it wrote none), so
reasoning + content is the solution when one beam is kept (with more beams
the reasoning shows every beam's accepted steps). The `specs` object carries
what `solve --json` prints besides the solution, and the settings the search
ran with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.render import generated_tokens
from app.search.events import CandidateCompleted, CandidatesDrafted, Event, Finished, StepAccepted

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Outcome:
    """A finished search, ready to be written as a completion."""

    reasoning: str
    content: str
    finish_reason: FinishReason
    prompt_tokens: int
    # Tokens sampled by the draft and the target, rejected candidates
    # included: what the answer cost, as a token count.
    completion_tokens: int
    specs: dict[str, Any]


class Transcript:
    """Follows one search's events; `follow` returns the reasoning each adds."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._texts: dict[str, str] = {}  # candidate id -> its step text
        self._completed: list[CandidateCompleted] = []

    def follow(self, event: Event) -> str | None:
        if isinstance(event, CandidatesDrafted):
            self._texts.update((c.id, c.text) for c in event.candidates)
        elif isinstance(event, CandidateCompleted):
            self._completed.append(event)
        elif isinstance(event, StepAccepted):
            self.steps.append(
                {
                    "step": event.step,
                    "origin": event.origin,
                    "text": event.text,
                    "reward": event.reward,
                    "score": event.merit,
                }
            )
            return event.text
        return None

    def outcome(
        self, finished: Finished, *, method: str, preset: str, settings: dict[str, Any], prompt_tokens: int
    ) -> Outcome:
        # The chosen solution is a completed one, perhaps with a box the
        # target was asked for appended (app/search/forced.py); a search cut
        # short (a full context) answers with its best partial solution: all
        # reasoning, no final step, cut by a limit.
        chosen = max(
            (c for c in self._completed if finished.solution.startswith(c.solution)),
            key=lambda c: len(c.solution),
            default=None,
        )
        content = ""
        if chosen is not None:
            start = len(chosen.solution) - len(self._texts.get(chosen.id, ""))
            content = finished.solution[start:]
        finish_reason: FinishReason = "length" if chosen is None or chosen.reason == "length" else "stop"
        return Outcome(
            reasoning="".join(step["text"] for step in self.steps),
            content=content,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=generated_tokens(finished.stats),
            specs={
                "answer": finished.answer,
                "steps": self.steps,
                "stats": finished.stats.to_json(),
                "method": method,
                "preset": preset,
                "settings": settings,
                "cancelled": finished.cancelled,
                "error": finished.error,
            },
        )
