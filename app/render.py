"""Plain-text formatting of search results, shared by `solve`, the TUI and `bench`.

No Textual and no Rich here: these return strings, so every reader of the event
stream says the same numbers the same way.
"""

from __future__ import annotations

import re

from app.search.events import Deferred, Stats, SwitchedToDraft

# Roles in the order a reader meets them in a SPECS step.
ROLES = ("draft", "target", "reward")

_NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?")


def generated_tokens(stats: Stats) -> int:
    """Tokens sampled by the policy models (the reward model only reads)."""
    return sum(stats.models[role].generated for role in ("draft", "target") if role in stats.models)


def tokens_per_second(stats: Stats) -> float:
    """Policy tokens sampled per second of wall time, the rate a user waits on."""
    if stats.wall_seconds <= 0:
        return 0.0
    return generated_tokens(stats) / stats.wall_seconds


def acceptance(stats: Stats) -> str:
    """`67% (4/6)`: share of accepted steps that the draft wrote."""
    return f"{stats.acceptance_rate:.0%} ({stats.draft_steps}/{stats.steps})"


def used_roles(stats: Stats) -> list[str]:
    """The roles that did any work, in draft, target, reward order.

    An idle draft (beam search on a preset that has one) is left out.
    """
    return [
        role
        for role in ROLES
        if role in stats.models and (stats.models[role].seconds > 0 or stats.models[role].generated > 0)
    ]


def stats_footer(stats: Stats) -> str:
    """One line of the numbers a run is judged by, e.g.

    `latency 12.3 s · draft 4.1 s · target 6.0 s · reward 1.9 s · 85 tok/s ·
    acceptance 67% (4/6) · deferrals 2`

    Models the run did not use are left out; acceptance and deferrals only mean
    something when a draft model took part.
    """
    roles = used_roles(stats)
    parts = [f"latency {stats.wall_seconds:.1f} s"]
    parts += [f"{role} {stats.models[role].seconds:.1f} s" for role in roles]
    parts.append(f"{tokens_per_second(stats):.0f} tok/s")
    if "draft" in roles:
        parts.append(f"acceptance {acceptance(stats)}")
        parts.append(f"deferrals {stats.deferrals}")
    return " · ".join(parts)


def deferral_reason(event: Deferred) -> str:
    """Why a step went to the target, e.g. `the best draft scored 5.31, not
    above tau_accept 7; the target doubted a result in 1 of 4 (p = 0.01); 1 of 4
    wrote a false equation: 5 + 7 = 13 (it is 12)`."""
    t = event.threshold
    if t.bounds == "tilted":
        reason = f"the best draft scored {event.best:.3g}, not above {t.name} {t.value:g}"
    else:
        reason = f"the draft step's reward {event.best:.3g} is below {t.name} {t.value:g}"
    if event.doubted:
        reason += f"; the target doubted a result in {event.doubted} of {event.drafts}"
        if event.lowest_result_prob is not None:
            reason += f" (p = {event.lowest_result_prob:.2g})"
    if event.false_equations:
        reason += f"; {event.false_equations} of {event.drafts} wrote a false equation"
        if event.false_equation is not None:
            reason += f": {event.false_equation}"
    return reason


def switch_reason(event: SwitchedToDraft) -> str:
    """Why the search went back to the draft, e.g. `reward 0.84 > tau_switch 0.70`."""
    return f"reward {event.reward:.2f} > {event.threshold.name} {event.threshold.value:.2f}"


def speedup(fast_seconds: float, slow_seconds: float) -> str:
    """`2.4x faster` / `1.3x slower`: how the first latency compares with the second."""
    if fast_seconds <= 0 or slow_seconds <= 0:
        return "no ratio (a run took no time)"
    ratio = slow_seconds / fast_seconds
    if ratio >= 1:
        return f"{ratio:.1f}x faster"
    return f"{1 / ratio:.1f}x slower"


def is_number(answer: str) -> bool:
    """Whether an answer is a plain number (drawn with big digits in the TUI)."""
    return _NUMBER.fullmatch(answer.strip()) is not None


def one_line(text: str, width: int) -> str:
    """Text on one line, cut to `width` cells with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def unboxed_answer(solution: str, width: int = 100) -> str:
    """What to show when a solution ended without a \\boxed{} answer: the
    solution's last line, so the reader still sees where it stopped."""
    lines = [line for line in solution.splitlines() if line.strip()]
    if not lines:
        return "no \\boxed{} answer (the solution is empty)"
    return f"no \\boxed{{}} answer; the solution ends: {one_line(lines[-1], width)}"
