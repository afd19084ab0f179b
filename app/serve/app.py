"""The ASGI app: /v1/models, /v1/chat/completions (whole or streamed), /health.

A client that disconnects cancels its search: while a reply is being made a
task waits on the connection's `http.disconnect` and sets the job's cancel
flag, which the search reads at every token; a streamed reply's generator
sets it when sse-starlette cancels it on a closed stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.runtime import sequence_capacity
from app.search.settings import SearchSettings
from app.search.types import Engines
from app.serve.protocol import (
    APIError,
    chunk,
    model_object,
    parse_chat,
    search_settings,
    usage_object,
)
from app.serve.worker import Done, Dropped, Failed, Job, Reasoning, SearchWorker, Update

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
# nginx's code for "the client closed the request": only the access log sees it.
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class ServedPreset:
    """What the server runs: a preset's engines, by method, with default settings."""

    name: str
    methods: Sequence[str]  # the first is the preset's own, the one a chat app lists first
    settings: SearchSettings  # a request's search options go on top of these

    def model_id(self, method: str) -> str:
        return f"specs-local/{self.name}/{method}"

    def method_of(self, model_id: str) -> str:
        for method in self.methods:
            if self.model_id(method) == model_id:
                return method
        served = ", ".join(self.model_id(m) for m in self.methods)
        raise APIError(
            404,
            f"The model {model_id!r} is not served here; choose one of {served}.",
            param="model",
            code="model_not_found",
        )

    def settings_for(self, given: dict[str, Any]) -> SearchSettings:
        settings = search_settings(self.settings, given)
        # The models were opened with sequence ids for the start settings; a
        # request asking for more live candidates would run out mid-search.
        if sequence_capacity(settings) > sequence_capacity(self.settings):
            raise APIError(
                400,
                f"n={settings.n} with beam_width={settings.beam_width} needs more sequences than this server holds;"
                f" ask for fewer, or start the server with --n {settings.n} --beam-width {settings.beam_width}.",
                param="n",
            )
        return settings


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class RequireKey:
    """Every request needs `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(key.encode()).digest()

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        # Hashing first makes the comparison's time independent of the key's length too.
        given = hashlib.sha256(token.encode("latin-1")).digest()
        return hmac.compare_digest(given, self._digest) and scheme.lower() == "bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            error = APIError(
                401,
                "Missing or incorrect API key; send the server's key as `Authorization: Bearer KEY`.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    too_large = APIError(
        413, f"The request body is larger than {limit} bytes; send a shorter conversation.", code="request_too_large"
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    try:
        data = json.loads(body)
    except ValueError:  # bad JSON or bad UTF-8
        raise APIError(400, "The request body is not valid JSON; send a JSON object.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object with model and messages.", code="invalid_json")
    return data


class Watch:
    """Sets the job's cancel flag when the client disconnects, while in a `with` block."""

    def __init__(self, request: Request, job: Job) -> None:
        self.request = request
        self.job = job
        self.gone = False

    async def _wait(self) -> None:
        # The body has been read, so the next message is the disconnect.
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.job.cancel.set()

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._wait())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Reply:
    """One completion's id, time and model, and its bodies."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return chunk(self.id, self.created, self.model, delta, finish_reason)

    def whole(self, done: Done) -> dict[str, Any]:
        o = done.outcome
        message = {"role": "assistant", "content": o.content, "reasoning_content": o.reasoning}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": o.finish_reason}],
            "usage": usage_object(o.prompt_tokens, o.completion_tokens),
            "specs": o.specs,
        }

    async def stream(self, job: Job, first: Update) -> AsyncIterator[str]:
        """SSE data lines: the role, reasoning deltas, the content, the last chunk with usage and stats, [DONE]."""
        try:
            yield self._dumps(self.chunk({"role": "assistant", "content": ""}))
            update = first
            while True:
                if isinstance(update, Reasoning):
                    yield self._dumps(self.chunk({"reasoning_content": update.text}))
                elif isinstance(update, Done):
                    o = update.outcome
                    if o.content:
                        yield self._dumps(self.chunk({"content": o.content}))
                    last = self.chunk({}, o.finish_reason)
                    last["usage"] = usage_object(o.prompt_tokens, o.completion_tokens)
                    last["specs"] = o.specs
                    yield self._dumps(last)
                    yield "[DONE]"
                    return
                elif isinstance(update, Failed):
                    yield self._dumps(update.error.body())
                    return
                elif isinstance(update, Dropped):
                    return
                update = await job.updates.get()
        finally:
            # A closed stream cancels the search (a finished one ignores it).
            job.cancel.set()

    @staticmethod
    def _dumps(body: dict[str, Any]) -> str:
        return json.dumps(body, ensure_ascii=False)


def create_app(
    served: ServedPreset,
    engines: Engines,
    *,
    queue_size: int = 8,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The server for `served` on opened `engines` (the caller closes them after the app stops)."""
    worker = SearchWorker(engines, served.name, queue_size=queue_size)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close)

    async def models(request: Request) -> Response:
        data = [model_object(served.model_id(m), started) for m in served.methods]
        return JSONResponse({"object": "list", "data": data})

    async def model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        served.method_of(model_id)
        return JSONResponse(model_object(model_id, started))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "searching": worker.searching, "queued": worker.queued})

    async def chat(request: Request) -> Response:
        try:
            body = await read_json(request, max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=CLIENT_CLOSED)
        asked, given = parse_chat(body)
        method = served.method_of(asked.model)
        job = Job(method, asked.question(), served.settings_for(given), loop=asyncio.get_running_loop())
        worker.submit(job)
        reply = Reply(asked.model)
        try:
            async with Watch(request, job) as watch:
                update = await job.updates.get()
                # Streamed or not, nothing is sent before the search has begun,
                # so a question that does not fit still gets its 400.
                while not asked.stream and not isinstance(update, Done | Failed | Dropped):
                    update = await job.updates.get()
        except BaseException:  # the server is stopping and cancels this handler
            job.cancel.set()
            raise
        if watch.gone:
            # A stream whose search already finished will not be read either.
            return Response(status_code=CLIENT_CLOSED)
        if isinstance(update, Failed):
            return error_response(update.error)
        if isinstance(update, Dropped):
            return error_response(APIError(503, "The server is stopping; retry once it is back.", type="server_error"))
        if asked.stream:

            async def stop() -> None:
                job.cancel.set()

            # The generator sets the flag too, but a stream closed before its
            # first chunk never starts the generator; this runs either way.
            return EventSourceResponse(reply.stream(job, update), sep="\n", background=BackgroundTask(stop))
        assert isinstance(update, Done)
        return JSONResponse(reply.whole(update))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "unknown_url" if exc.status_code == 404 else None
        message = f"{request.method} {request.url.path}: {exc.detail}; the API serves /v1/models, /v1/chat/completions and /health."
        return error_response(APIError(exc.status_code, message, code=code))

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback; the client gets one sentence.
        return error_response(APIError(500, "The server failed; its log has the details.", type="server_error"))

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/models/{model_id:path}", model),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health),
        ],
        middleware=[Middleware(RequireKey, key=api_key)] if api_key else [],
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.served = served
    return app
