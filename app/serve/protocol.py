"""The OpenAI chat-completions wire format, as far as this server speaks it.

A request is an OpenAI chat request whose extra top-level fields are search
options (`n`, `beta`, `tau_accept`, ... any `SearchSettings` field). Refusals
are `APIError`s, which render as OpenAI's error object
`{"error": {"message", "type", "param", "code"}}` with the HTTP status.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.search.settings import SearchSettings

# Far more than any served model's context holds (4096 tokens are about 16k
# characters of English); a longer text is refused before it is tokenized.
MAX_QUESTION_CHARS = 32_000

SEARCH_FIELDS = frozenset(SearchSettings.model_fields)


class APIError(Exception):
    """A request the server refuses, said in one sentence that names the fix."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the parameter."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    detail = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}."
    elif first["type"] == "missing":
        message = f"Missing required parameter: {param}."
    elif param is None:
        message = f"Invalid search options: {detail}."
    else:
        message = f"Invalid {param}: {detail}."
    return APIError(400, message, param=param)


class Message(BaseModel):
    # Chat apps send more per message (names, ids, earlier reasoning); only the
    # role and the text matter to a search.
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"Message {index} has a {part.get('type')!r} part; this server reads text only, so send the question as text.",
                    param=f"messages.{index}.content",
                )
            texts.append(part["text"])
        return "\n".join(texts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # The usage always comes in the last chunk, asked for or not.
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The OpenAI fields of a chat request; search options are split off first (`parse_chat`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Editors and chat apps send these by default. A step search has no use
    # for them (it ends at its step cap, not at a token budget, and its steps
    # end at the step delimiter), so they are accepted and ignored rather than
    # refusing those clients.
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    user: str | None = None

    def question(self) -> str:
        """The last user message, the one the search solves (earlier turns are not read)."""
        users = [(i, m) for i, m in enumerate(self.messages) if m.role == "user"]
        if not users:
            raise APIError(400, "The messages hold no user message; send the question as one.", param="messages")
        index, message = users[-1]
        text = message.text(index).strip()
        if not text:
            raise APIError(
                400, "The question is empty; send a math problem as the last user message.", param="messages"
            )
        if len(text) > MAX_QUESTION_CHARS:
            raise APIError(
                400,
                f"The question is {len(text)} characters long, more than the {MAX_QUESTION_CHARS} this server reads;"
                " send a shorter one.",
                param="messages",
                code="context_length_exceeded",
            )
        return text


def parse_chat(body: dict[str, Any]) -> tuple[ChatRequest, dict[str, Any]]:
    """The OpenAI part of a request body and the search options given in it (None: not given)."""
    search = {key: body[key] for key in SEARCH_FIELDS & body.keys() if body[key] is not None}
    rest = {key: value for key, value in body.items() if key not in SEARCH_FIELDS}
    try:
        return ChatRequest.model_validate(rest), search
    except ValidationError as exc:
        raise validation_error(exc) from None


def search_settings(defaults: SearchSettings, given: dict[str, Any]) -> SearchSettings:
    """The server's settings with a request's search options on top, checked as the CLI checks its flags."""
    try:
        return SearchSettings(**{**defaults.model_dump(), **given})
    except ValidationError as exc:
        raise validation_error(exc) from None


# -- bodies ------------------------------------------------------------------------


def model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "specs-local"}


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    completion_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
