"""What is checked about served models before a search starts (and by `doctor`).

Opening a RemoteModel already checks that every server answers and serves
the model's name. `check_teacher_forcing` asks each server for prompt
log-probabilities; `vocab_problem` compares a draft and a target that are not
both GGUF files here (one on a server, or both) by what they make of a probe
text: the same token ids, read back as the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import EngineError, LanguageModel, ServerError, VocabularyMismatch
from engines.remote.client import RetryPolicy, ServerPool
from engines.remote.model import RemoteModel, choices_of, prompt_row

# `doctor` asks once and does not wait long: it reports, the runtime retries.
DOCTOR_POLICY = RetryPolicy(attempts=1, timeout_s=15.0)

# Digits, LaTeX, the step delimiter, accents, math symbols and CJK: where
# tokenizers of different families part ways.
PROBE = (
    "Step 1: 12 + 30 = 42, and \\frac{3}{4} of 128 is 96.\n\n"
    "Étape 2 : x² − 1 ≥ 0 ⇒ |x| ≥ 1; 数学的答案是 \\boxed{96}.\n\n"
)


def check_teacher_forcing(model: RemoteModel) -> None:
    """Raise ServerError, naming the server, unless every server of `model`
    returns prompt log-probabilities (vLLM's `prompt_logprobs`)."""
    tokens = model.tokenize("1 + 1 = 2")
    if len(tokens) < 2:
        raise ServerError(f"{model.name} makes too few tokens of a probe to check teacher forcing.")
    body = {"model": model.served, "prompt": [tokens], "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
    for endpoint in model.pool.endpoints:
        answer = model.pool.call("POST", "completions", body, server=endpoint)
        [choice] = choices_of(answer, [endpoint.url])
        prompt_row(tokens, choice, [endpoint.url])


@dataclass(frozen=True)
class ServerCheck:
    url: str
    served: str
    problem: str | None  # one sentence, None when the server can run the model's role
    max_model_len: int | None = None


def check_server(url: str, served: str, *, api_key: str | None, teacher_forcing: bool) -> ServerCheck:
    """Whether one server answers, serves `served` and (for a draft or target)
    returns prompt log-probabilities; a problem is said as the runtime says it."""
    pool = ServerPool([url], api_key=api_key, policy=DOCTOR_POLICY)
    try:
        model = RemoteModel(pool, served)
        if teacher_forcing:
            check_teacher_forcing(model)
    except EngineError as exc:
        return ServerCheck(url, served, str(exc))
    finally:
        pool.close()
    return ServerCheck(url, served, None, model.n_ctx)


def vocab_problem(draft: LanguageModel, target: LanguageModel) -> str | None:
    """Why the draft's tokens would mean something else to the target, judged on
    a probe inside the target's chat template (None when they agree)."""
    text = target.format_chat("You are a careful mathematician.", PROBE)
    mine, theirs = draft.tokenize(text), target.tokenize(text)
    if mine != theirs:
        at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        return f"they split the same text differently (token {at} of a probe is {_at(mine, at)} and {_at(theirs, at)})"
    if draft.detokenize(theirs) != target.detokenize(theirs):
        return "the same token ids read back as different text"
    return None


def check_shared_vocab(draft: LanguageModel, target: LanguageModel) -> None:
    problem = vocab_problem(draft, target)
    if problem:
        raise VocabularyMismatch(
            f"the draft {draft.name} cannot propose tokens for the target {target.name}: {problem}; "
            "pick a draft of the target's model family."
        )


def _at(tokens: list[int], i: int) -> str:
    return f"id {tokens[i]}" if i < len(tokens) else "the end"
