"""A ready-made problem for the scripted engines: "What is 12 + 30?", with a
draft that slips and a target that knows the way (see `scripted_engines`)."""

from __future__ import annotations

from engines.testing.script import Continuation

# -- a ready-made problem ------------------------------------------------------

ARITHMETIC_QUESTION = "What is 12 + 30?"
_PLAN = "We need to add 12 and 30.\n\n"
_PLAN_WRONG = "We need to subtract 30 from 12.\n\n"
_TENS = "First add the tens: 10 + 30 = 40.\n\n"
_TENS_WRONG = "First add the tens: 10 + 30 = 50.\n\n"
_ONES = "Then add the ones: 40 + 2 = 42.\n\n"
_ONES_WRONG_A = "Then add the ones: 40 + 2 = 24.\n\n"
_ONES_WRONG_B = "Then add the ones: 40 + 2 = 44.\n\n"
_ONES_AFTER_WRONG = "Then add the ones: 50 + 2 = 52.\n\n"
_ANSWER = "The answer is \\boxed{42}."
_ANSWER_ALT = "So 12 + 30 = \\boxed{42}."
_ANSWER_WRONG = "The answer is \\boxed{52}."
_ANSWER_NEGATIVE = "The answer is \\boxed{-18}."
_NEGATIVE = "12 - 30 = -18.\n\n"

# The draft knows the way but slips: it sometimes proposes a wrong tens step,
# and after the tens step it only proposes wrong ones steps, so SPECS must
# defer that step to the target and then switch back for the answer.
ARITHMETIC_DRAFT: dict[str, tuple[Continuation, ...]] = {
    "": (Continuation(_PLAN, -0.1), Continuation(_PLAN_WRONG, -2.4)),
    _PLAN: (Continuation(_TENS, -0.3), Continuation(_TENS_WRONG, -1.4)),
    _PLAN_WRONG: (Continuation(_NEGATIVE, -0.1),),
    _NEGATIVE: (Continuation(_ANSWER_NEGATIVE, -0.1, eos=True),),
    _TENS: (Continuation(_ONES_WRONG_A, -0.5), Continuation(_ONES_WRONG_B, -0.9)),
    _TENS_WRONG: (Continuation(_ONES_AFTER_WRONG, -0.1),),
    _ONES: (Continuation(_ANSWER, -0.1, eos=True), Continuation(_ANSWER_ALT, -2.4, eos=True)),
    _ONES_AFTER_WRONG: (Continuation(_ANSWER_WRONG, -0.1, eos=True),),
    _ONES_WRONG_A: (Continuation("The answer is \\boxed{24}.", -0.1, eos=True),),
    _ONES_WRONG_B: (Continuation("The answer is \\boxed{44}.", -0.1, eos=True),),
}
ARITHMETIC_TARGET: dict[str, tuple[Continuation, ...]] = {
    "": (Continuation(_PLAN, -0.05), Continuation(_PLAN_WRONG, -4.0)),
    _PLAN: (Continuation(_TENS, -0.1), Continuation(_TENS_WRONG, -3.5)),
    _PLAN_WRONG: (Continuation(_NEGATIVE, -0.1),),
    _NEGATIVE: (Continuation(_ANSWER_NEGATIVE, -0.1, eos=True),),
    _TENS: (Continuation(_ONES, -0.05), Continuation(_ONES_WRONG_A, -5.0), Continuation(_ONES_WRONG_B, -4.5)),
    _TENS_WRONG: (Continuation(_ONES_AFTER_WRONG, -0.2),),
    _ONES: (Continuation(_ANSWER, -0.05, eos=True), Continuation(_ANSWER_ALT, -1.0, eos=True)),
    _ONES_AFTER_WRONG: (Continuation(_ANSWER_WRONG, -0.1, eos=True),),
}
ARITHMETIC_REWARDS: dict[str, float] = {
    _PLAN: 0.9,
    _PLAN_WRONG: 0.2,
    _NEGATIVE: 0.1,
    _ANSWER_NEGATIVE: 0.05,
    _TENS: 0.85,
    _TENS_WRONG: 0.1,
    _ONES: 0.95,
    _ONES_WRONG_A: 0.05,
    _ONES_WRONG_B: 0.1,
    _ONES_AFTER_WRONG: 0.15,
    _ANSWER: 0.97,
    _ANSWER_ALT: 0.93,
    _ANSWER_WRONG: 0.1,
    "The answer is \\boxed{24}.": 0.05,
    "The answer is \\boxed{44}.": 0.05,
}
