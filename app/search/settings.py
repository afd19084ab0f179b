"""Search settings shared by every method, validated at the boundary.

Defaults follow the one complete SPECS configuration the official code
publishes (run.sh, Llama 1B -> 8B pair): beta 10, tau_accept 7, tau_switch 0.7,
temperature 0.3, 512 tokens per step, 30 steps. With rewards in [0, 1] this
reads "accept a draft when mean(log p_T - log p_D) + 10 r > 7", i.e. roughly
when the reward is above 0.7 and the target does not disagree strongly, and
"return to the draft after a target step whose reward is above 0.7" (the same
0.7 RSD uses as its delta).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    METHODS: tuple[str, ...]  # the method names, in the registry's order
    Method = str  # a method name, checked against the registry where models.toml is read


class SearchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # n candidates per step: drafts in SPECS, beams x expansions in beam search,
    # full solutions in best-of-n. The paper reports n = 4, 8, 16.
    n: int = Field(4, ge=1, le=64)
    # Prefixes kept after each step. SPECS's code keeps one (m = 1); beam search
    # in search-and-learn keeps n / m with m = 4, which for n = 4 is one as well.
    beam_width: int = Field(1, ge=1, le=64)
    # Sampling temperature; SPECS also reuses it as the softmax temperature of
    # the acceptance distribution, as the official code does.
    temperature: float = Field(0.3, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    beta: float = Field(10.0, ge=0.0)
    tau_accept: float = 7.0
    tau_switch: float = Field(0.7, ge=0.0, le=1.0)
    # RSD keeps a draft step whose reward is at least delta (RSD's default).
    rsd_delta: float = Field(0.7, ge=0.0, le=1.0)
    # Arithmetic check (not in the paper; 0 turns it off): when the target
    # gives a result written after "=" a probability p below this, the step's
    # reward is scaled by p / result_check. Costs no model call; see
    # app/search/arithmetic.py for why a small judge needs it.
    result_check: float = Field(0.0, ge=0.0, le=1.0)
    # Equation check (not in the paper): a step that writes an equation
    # between numbers whose sides differ ("5 + 7 + 14 = 36") gets reward 0.
    # Exact and free; see app/search/equations.py.
    equation_check: bool = False
    # Length normalisation of the log-ratio: the official code averages per
    # token; GSI sums.
    logprob_norm: Literal["mean", "sum"] = "mean"
    # The first step comes from the target, as in the official code.
    first_step_target: bool = True
    max_steps: int = Field(30, ge=1, le=500)
    max_step_tokens: int = Field(512, ge=1, le=32768)
    # Final answer: the best completed candidate by merit, or a reward-weighted
    # vote over the answers of completed candidates.
    answer_selection: Literal["best", "vote"] = "best"
    seed: int = 0

    @model_validator(mode="after")
    def _beam_fits(self) -> SearchSettings:
        if self.beam_width > self.n:
            raise ValueError(f"beam width m={self.beam_width} cannot exceed n={self.n}")
        return self


def __getattr__(name: str) -> Any:
    # METHODS and Method come from the registry (app/search/methods.py), which
    # imports the searches, which import this module: they are made on first use.
    if name in ("METHODS", "Method"):
        from app.search.methods import REGISTRY

        names = tuple(REGISTRY)
        return names if name == "METHODS" else Literal[names]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
