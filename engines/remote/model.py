"""A language model served by vLLM, behind the same protocol as the in-process one.

A sequence is its token list on the client: `fork`, `extend` and `truncate`
are list operations and cost no request. Every call sends whole token-id
prompts, so the client needs no tokenizer files; vLLM's automatic prefix
caching is what keeps a beam's shared history from being recomputed.

- `tokenize`, `detokenize` and chat templates go through vLLM's `/tokenize`
  and `/detokenize` (the chat template is the server's).
- `sample`: `/v1/completions` with `n = k` per sequence (concurrently across
  sequences and servers), the step delimiter as a stop string kept in the
  text (`include_stop_str_in_output`), the sampled tokens' log-probabilities
  (`logprobs: 0`) and their ids (`return_tokens_as_token_ids`). vLLM reports
  log-probabilities before temperature and top-p (its default `raw_logprobs`
  mode), as the protocol wants. Sampling parameters the server could
  otherwise take from the model's generation_config (top_k, penalties) are
  sent explicitly, so a request means the same on every server.
- `score`: teacher forcing with vLLM's `prompt_logprobs` and `max_tokens: 1`;
  the entry of the first prompt token is null and is never read.
- `next_token_logprobs` (for text rewards): the top log-probabilities of the
  next token; ids missing from them are read exactly, as the prompt
  log-probability of the id appended to the prompt.

Followed: vLLM 0.32.0 (its OpenAI-compatible server's source and a running
0.32.0 server); the request fields used here are in the API reference of
vLLM 0.15 and later as well.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np

from engines.base import (
    ContextFullError,
    EngineError,
    ModelUsage,
    ProgressFn,
    Sampled,
    SampleParams,
    Scored,
    Seq,
    ServerError,
    StopFn,
    StopReason,
    timed,
)
from engines.prompts import system_user
from engines.remote.client import ServerPool

# vLLM samples greedily below this temperature (vllm/sampling_params.py).
_GREEDY = 1e-5
# vLLM's default --max-logprobs; a request for more is refused.
TOP_LOGPROBS = 20
_TOKEN_ID = "token_id:"
_CACHED_PROMPTS = 256
# Sampling knobs pinned to "off" in every request (see the module docstring).
_NEUTRAL = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


class RemoteSeq:
    """A sequence of a RemoteModel: its tokens (implements `engines.base.Seq`)."""

    __slots__ = ("_model", "_released", "_seen", "_tokens")

    def __init__(self, model: RemoteModel, tokens: list[int], seen: int) -> None:
        self._model = model
        self._tokens = tokens
        self._seen = seen  # tokens the server has read for this sequence (for usage counts)
        self._released = False

    @property
    def n_tokens(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(self._tokens)

    def __repr__(self) -> str:
        state = "released" if self._released else "live"
        return f"<RemoteSeq {self._model.name} {state}, {len(self._tokens)} tokens>"


def find_served(pool: ServerPool, served: str) -> dict[str, Any]:
    """The model card of `served` on every server of the pool (vLLM's
    /v1/models lists what a server serves, with its `max_model_len`)."""
    card: dict[str, Any] = {}
    for endpoint in pool.endpoints:
        answer = pool.call("GET", "models", server=endpoint)
        data = answer.get("data")
        cards = data if isinstance(data, list) else []
        names = [c.get("id") for c in cards if isinstance(c, dict)]
        match = next((c for c in cards if isinstance(c, dict) and c.get("id") == served), None)
        if match is None:
            shown = ", ".join(str(n) for n in names) or "nothing"
            raise ServerError(
                f"the server at {endpoint.url} does not serve {served!r} (it serves {shown}); "
                "fix the model's `served` name or start the server with --served-model-name."
            )
        card = match
    return card


class RemoteModel:
    """A causal LM on one or more vLLM servers (implements `engines.base.LanguageModel`)."""

    def __init__(
        self,
        pool: ServerPool,
        served: str,
        *,
        name: str | None = None,
        n_ctx: int | None = None,
        top_logprobs: int = TOP_LOGPROBS,
    ) -> None:
        self.pool = pool
        self.served = served
        self.name = name or served
        self.usage = ModelUsage()
        self.top_logprobs = top_logprobs
        card = find_served(pool, served)
        limits = [n for n in (n_ctx, card.get("max_model_len")) if isinstance(n, int) and n > 0]
        if not limits:
            raise EngineError(f"the context size of {self.name} is unknown; set `context` in its catalog entry.")
        self._n_ctx = min(limits)
        self._lock = threading.Lock()
        self._timing = threading.local()
        self._pieces: dict[int, str] = {}
        self._prompts: OrderedDict[str, list[int]] = OrderedDict()
        bos = self._tokenize_text("", add_special=True)
        self._bos_text = self.detokenize(bos[:1]) if bos else ""

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def urls(self) -> list[str]:
        return self.pool.urls

    def __repr__(self) -> str:
        return f"<RemoteModel {self.name} ({self.served} at {', '.join(self.urls)}) n_ctx={self._n_ctx}>"

    # --- requests ---------------------------------------------------------------------

    def post(
        self,
        requests: Sequence[tuple[str, dict[str, Any]]],
        usage: ModelUsage,
        *,
        root: bool = False,
        should_stop: StopFn | None = None,
    ) -> list[dict[str, Any]]:
        """Concurrent POSTs; the wait is charged to `usage` as server time, and
        as a call of its own when no timed method of this model is running (a
        tokenize costs a round trip here, unlike in process)."""
        t0 = time.perf_counter()
        try:
            return self.pool.call_all(requests, root=root, should_stop=should_stop)
        finally:
            waited = time.perf_counter() - t0
            usage.native_seconds += waited
            if usage is self.usage and not getattr(self._timing, "on", False):
                usage.seconds += waited
                usage.calls += 1

    @contextmanager
    def _timed(self, usage: ModelUsage | None = None) -> Iterator[None]:
        """Time a public call on this model's usage; a caller passing its own
        `usage` times itself (a reward model's accounts)."""
        if usage is not None or getattr(self._timing, "on", False):
            yield
            return
        self._timing.on = True
        try:
            with timed(self.usage):
                yield
        finally:
            self._timing.on = False

    # --- text -----------------------------------------------------------------------

    def format_chat(self, system: str, user: str) -> str:
        return self.render_chat(system_user(system, user), add_generation_prompt=True)

    def render_chat(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """A conversation through the server's chat template. The token ids the
        server made of it are kept, so the text's prompt_tokens are exactly those."""
        [tokens] = self.chat_tokens([messages], add_generation_prompt=add_generation_prompt)
        text = self.detokenize(tokens)
        with self._lock:
            self._prompts[text] = tokens
            while len(self._prompts) > _CACHED_PROMPTS:
                self._prompts.popitem(last=False)
        return text

    def chat_tokens(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        *,
        add_generation_prompt: bool,
        usage: ModelUsage | None = None,
        should_stop: StopFn | None = None,
    ) -> list[list[int]]:
        """The token ids of each conversation through the server's chat template."""
        requests = [
            (
                "tokenize",
                {"model": self.served, "messages": list(messages), "add_generation_prompt": add_generation_prompt},
            )
            for messages in conversations
        ]
        answers = self.post(requests, usage or self.usage, root=True, should_stop=should_stop)
        return [_int_list(answer.get("tokens"), "tokenize", self.urls) for answer in answers]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a continuation text: no BOS, special tokens parsed."""
        return self._tokenize_text(text, add_special=False)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Token ids of a whole prompt: BOS once when the vocabulary wants one."""
        with self._lock:
            known = self._prompts.get(prompt)
        if known is not None:
            return list(known)
        written = bool(self._bos_text) and prompt.startswith(self._bos_text)
        return self._tokenize_text(prompt, add_special=not written)

    def _tokenize_text(self, text: str, *, add_special: bool) -> list[int]:
        body = {"model": self.served, "prompt": text, "add_special_tokens": add_special}
        [answer] = self.post([("tokenize", body)], self.usage, root=True)
        return _int_list(answer.get("tokens"), "tokenize", self.urls)

    def detokenize(self, tokens: Sequence[int]) -> str:
        ids = [int(t) for t in tokens]
        if not ids:
            return ""
        if len(ids) == 1 and ids[0] in self._pieces:
            return self._pieces[ids[0]]
        [answer] = self.post([("detokenize", {"model": self.served, "tokens": ids})], self.usage, root=True)
        text = answer.get("prompt")
        if not isinstance(text, str):
            raise ServerError(f"the server at {self.urls[0]} answered detokenize without a text.")
        if len(ids) == 1:
            self._pieces[ids[0]] = text
        return text

    # --- sequences --------------------------------------------------------------------

    def start(
        self,
        prompt: str | Sequence[int],
        *,
        should_stop: StopFn | None = None,
        usage: ModelUsage | None = None,
    ) -> RemoteSeq:
        """A sequence of the prompt's tokens; the server reads them with the first
        call that continues it (under that call's `should_stop`)."""
        with self._timed(usage):
            tokens = self.prompt_tokens(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
            if not tokens:
                raise EngineError(f"cannot start a sequence of {self.name} from an empty prompt.")
            if len(tokens) > self._n_ctx:
                raise ContextFullError(
                    f"the prompt has {len(tokens)} tokens but the context of {self.name} holds {self._n_ctx}; "
                    "shorten the question or serve the model with a larger --max-model-len."
                )
            return RemoteSeq(self, tokens, 0)

    def fork(self, seq: Seq) -> RemoteSeq:
        parent = self._check_seq(seq)
        return RemoteSeq(self, list(parent._tokens), parent._seen)

    def extend(self, seq: Seq, tokens: Sequence[int], *, should_stop: StopFn | None = None) -> None:
        """Append tokens; the server reads them with the next call that continues the sequence."""
        seq = self._check_seq(seq)
        ids = [int(t) for t in tokens]
        self._check_room(seq.n_tokens + len(ids), "extending a sequence")
        seq._tokens.extend(ids)

    def truncate(self, seq: Seq, n_tokens: int) -> None:
        seq = self._check_seq(seq)
        if not 0 <= n_tokens <= seq.n_tokens:
            raise ValueError(f"cannot truncate a sequence of {seq.n_tokens} tokens to {n_tokens}")
        del seq._tokens[n_tokens:]
        seq._seen = min(seq._seen, n_tokens)

    def release(self, seq: Seq) -> None:
        if not isinstance(seq, RemoteSeq) or seq._model is not self:
            raise ValueError(f"{seq!r} does not belong to {self.name}")
        seq._released = True

    def _check_seq(self, seq: object) -> RemoteSeq:
        if not isinstance(seq, RemoteSeq) or seq._model is not self:
            raise ValueError(f"{seq!r} is not a sequence of {self.name}")
        if seq._released:
            raise EngineError(f"a released sequence of {self.name} was used again.")
        return seq

    def _check_room(self, n_tokens: int, doing: str) -> None:
        if n_tokens > self._n_ctx:
            raise ContextFullError(
                f"{doing} needs {n_tokens} tokens but the context of {self.name} holds {self._n_ctx}."
            )

    def _read(self, seqs: Sequence[RemoteSeq], usage: ModelUsage) -> None:
        """Count the tokens the server reads for the first time as prefilled."""
        for seq in dict.fromkeys(seqs):
            usage.prefilled += seq.n_tokens - seq._seen
            usage.decoded_rows += seq.n_tokens - seq._seen
            seq._seen = seq.n_tokens

    # --- sampling -------------------------------------------------------------------

    def sample(
        self,
        seqs: Sequence[Seq],
        k: int,
        params: SampleParams,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[list[Sampled]]:
        with self._timed():
            checked = [self._check_seq(seq) for seq in seqs]
            if k < 1:
                raise ValueError(f"k must be at least 1, not {k}")
            if params.max_tokens < 1 or params.temperature < 0 or not 0 < params.top_p <= 1:
                raise ValueError(f"invalid sampling parameters {params}")
            if not checked:
                return []
            greedy = params.temperature < _GREEDY
            requests = []
            for i, seq in enumerate(checked):
                room = self._n_ctx - seq.n_tokens
                if room < 1:
                    raise ContextFullError(
                        f"a sequence of {seq.n_tokens} tokens fills the {self._n_ctx}-token context of {self.name}; "
                        "there is no room for another step."
                    )
                body = {
                    "model": self.served,
                    "prompt": list(seq._tokens),
                    # vLLM refuses n > 1 with greedy sampling; its k continuations are one.
                    "n": 1 if greedy else k,
                    "max_tokens": min(params.max_tokens, room),
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    **_NEUTRAL,
                    "seed": zlib.crc32(f"{params.seed}:{i}".encode()) & 0x7FFFFFFF,
                    "stop": [params.delimiter] if params.delimiter else [],
                    "include_stop_str_in_output": True,
                    "logprobs": 0,
                    "return_tokens_as_token_ids": True,
                }
                requests.append(("completions", body))
            answers = self.post(requests, self.usage, should_stop=should_stop)
            self._read(checked, self.usage)
            results = [self._continuations(seq, answer, 1 if greedy else k) for seq, answer in zip(checked, answers)]
            if greedy:
                results = [[_copy(drafts[0], self) for _ in range(k)] for drafts in results]
            self.usage.generated += sum(len(d.tokens) for drafts in results for d in drafts)
            self.usage.decoded_rows += sum(len(d.tokens) for drafts in results for d in drafts)
            if progress is not None:
                progress([[d.text for d in drafts] for drafts in results])
            return results

    def _continuations(self, seq: RemoteSeq, answer: dict[str, Any], k: int) -> list[Sampled]:
        choices = choices_of(answer, self.urls)
        if len(choices) != k:
            raise ServerError(f"the server at {self.urls[0]} returned {len(choices)} completions where {k} were asked.")
        drafts = []
        for choice in choices:
            tokens, logprobs = _sampled(choice, self.urls)
            stop = _stop_reason(choice)
            drafts.append(
                Sampled(
                    tokens=tokens,
                    text=str(choice.get("text", "")),
                    logprobs=logprobs,
                    stop=stop,
                    seq=RemoteSeq(self, seq._tokens + tokens, seq.n_tokens + len(tokens)),
                )
            )
        return drafts

    # --- teacher forcing --------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        *,
        should_stop: StopFn | None = None,
    ) -> list[Scored]:
        with self._timed():
            checked = self._pairs(pairs)
            wanted = [(i, parent, cand) for i, (parent, cand) in enumerate(checked) if cand]
            logprobs: list[list[float]] = [[] for _ in checked]
            if wanted:
                prompts = [parent._tokens + cand for _, parent, cand in wanted]
                rows = self._prompt_logprobs(prompts, self.usage, should_stop)
                for (i, parent, _), row in zip(wanted, rows):
                    logprobs[i] = row[parent.n_tokens :]
            self._read([p for p, _ in checked], self.usage)
            self.usage.prefilled += sum(len(c) for _, c in checked)
            self.usage.decoded_rows += sum(len(c) for _, c in checked)
            return [
                Scored(lp, RemoteSeq(self, parent._tokens + cand, parent.n_tokens + len(cand)))
                for lp, (parent, cand) in zip(logprobs, checked)
            ]

    def _pairs(self, pairs: Sequence[tuple[Seq, Sequence[int]]]) -> list[tuple[RemoteSeq, list[int]]]:
        checked = []
        for seq, cand in pairs:
            parent = self._check_seq(seq)
            ids = [int(t) for t in cand]
            self._check_room(parent.n_tokens + len(ids), "scoring a candidate")
            checked.append((parent, ids))
        return checked

    def _prompt_logprobs(
        self, prompts: Sequence[list[int]], usage: ModelUsage, should_stop: StopFn | None
    ) -> list[list[float]]:
        """Each prompt's per-token log-probabilities (index 0, which has none, is 0)."""
        chunks = _spread(list(prompts), len(self.urls))
        body = {"model": self.served, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        answers = self.post(
            [("completions", {**body, "prompt": chunk}) for chunk in chunks], usage, should_stop=should_stop
        )
        rows: list[list[float]] = []
        for chunk, answer in zip(chunks, answers):
            choices = choices_of(answer, self.urls)
            if len(choices) != len(chunk):
                raise ServerError(
                    f"the server at {self.urls[0]} answered {len(choices)} prompts where {len(chunk)} were sent."
                )
            rows.extend(prompt_row(prompt, choice, self.urls) for prompt, choice in zip(chunk, choices))
        return rows

    # --- next-token log-probabilities (text rewards) -----------------------------------

    def next_token_logprobs(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        token_ids: Sequence[int],
        *,
        usage: ModelUsage | None = None,
        should_stop: StopFn | None = None,
    ) -> tuple[np.ndarray, list[RemoteSeq]]:
        """Log-probabilities of `token_ids` right after each seq + tokens, and the
        extended sequences (the caller owns them). `usage` charges another record."""
        with self._timed(usage):
            charged = usage or self.usage
            ids = [int(t) for t in token_ids]
            checked = self._pairs(pairs)
            prompts = [parent._tokens + cand for parent, cand in checked]
            for prompt in prompts:
                self._check_room(len(prompt) + 1, "reading the next token")
            requests = [
                (
                    "completions",
                    {
                        "model": self.served,
                        "prompt": prompt,
                        "max_tokens": 1,
                        "temperature": 0.0,
                        "logprobs": self.top_logprobs,
                        "return_tokens_as_token_ids": True,
                    },
                )
                for prompt in prompts
            ]
            answers = self.post(requests, charged, should_stop=should_stop)
            table = np.full((len(prompts), len(ids)), np.nan)
            for row, answer in enumerate(answers):
                top = _top_logprobs(choices_of(answer, self.urls)[0], self.urls)
                for col, token in enumerate(ids):
                    if token in top:
                        table[row, col] = top[token]
            missing = [(int(row), int(col)) for row, col in np.argwhere(np.isnan(table))]
            if missing:
                # Below the top ones: read each exactly as the prompt log-probability
                # of the id appended to the prompt.
                appended = [prompts[row] + [ids[col]] for row, col in missing]
                exact = self._prompt_logprobs(appended, charged, should_stop)
                for (row, col), values in zip(missing, exact):
                    table[row, col] = values[-1]
            self._read([p for p, _ in checked], charged)
            charged.prefilled += sum(len(c) for _, c in checked)
            children = [RemoteSeq(self, prompt, len(prompt)) for prompt in prompts]
            return table, children


# --- answers ----------------------------------------------------------------------------


def _copy(draft: Sampled, model: RemoteModel) -> Sampled:
    """One of k identical greedy continuations, with a sequence of its own."""
    seq = cast(RemoteSeq, draft.seq)
    return Sampled(
        tokens=list(draft.tokens),
        text=draft.text,
        logprobs=list(draft.logprobs),
        stop=draft.stop,
        seq=RemoteSeq(model, list(seq._tokens), seq._seen),
    )


def _spread(prompts: list[list[int]], parts: int) -> list[list[list[int]]]:
    """Prompts in at most `parts` contiguous chunks of near-equal size."""
    parts = max(1, min(parts, len(prompts)))
    size = -(-len(prompts) // parts)
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


def _int_list(value: object, what: str, urls: list[str]) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) for t in value):
        raise ServerError(f"the server at {urls[0]} answered {what} without a list of token ids.")
    return value


def choices_of(answer: dict[str, Any], urls: list[str]) -> list[dict[str, Any]]:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ServerError(f"the server at {urls[0]} answered a completion without choices.")
    return sorted(choices, key=lambda c: int(c.get("index", 0)))


def _token_id(text: object, urls: list[str]) -> int:
    if isinstance(text, str) and text.startswith(_TOKEN_ID):
        return int(text[len(_TOKEN_ID) :])
    raise ServerError(
        f"the server at {urls[0]} did not return token ids (return_tokens_as_token_ids); serve the model with vLLM."
    )


def _sampled(choice: dict[str, Any], urls: list[str]) -> tuple[list[int], list[float]]:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise ServerError(f"the server at {urls[0]} returned a completion without log-probabilities.")
    tokens = [_token_id(t, urls) for t in logprobs.get("tokens") or []]
    values = [float(v) if v is not None else float("nan") for v in logprobs.get("token_logprobs") or []]
    if len(values) != len(tokens):
        raise ServerError(f"the server at {urls[0]} returned {len(values)} log-probabilities for {len(tokens)} tokens.")
    return tokens, values


def _stop_reason(choice: dict[str, Any]) -> StopReason:
    if choice.get("finish_reason") == "length":
        return StopReason.LENGTH
    # vLLM: stop_reason is the stop string that matched, or None (or a stop
    # token id) when the model ended the text itself.
    return StopReason.DELIMITER if isinstance(choice.get("stop_reason"), str) else StopReason.EOS


def prompt_row(prompt: list[int], choice: dict[str, Any], urls: list[str]) -> list[float]:
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(prompt):
        raise ServerError(
            f"the server at {urls[0]} did not return prompt log-probabilities (prompt_logprobs); "
            "teacher forcing needs vLLM's OpenAI-compatible server."
        )
    row = [0.0]
    for token, entry in zip(prompt[1:], entries[1:]):
        found = entry.get(str(token)) if isinstance(entry, dict) else None
        if not isinstance(found, dict) or "logprob" not in found:
            raise ServerError(f"the server at {urls[0]} left token {token} out of its prompt log-probabilities.")
        row.append(float(found["logprob"]))
    return row


def _top_logprobs(choice: dict[str, Any], urls: list[str]) -> dict[int, float]:
    logprobs = choice.get("logprobs")
    tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(tops, list) or not tops or not isinstance(tops[0], dict):
        raise ServerError(f"the server at {urls[0]} returned no top log-probabilities.")
    return {_token_id(text, urls): float(value) for text, value in tops[0].items()}
