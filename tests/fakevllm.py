"""A loopback stand-in for vLLM's OpenAI-compatible server, computing with llama.cpp.

It serves the subset of the API that engines/remote uses, with bodies shaped
as vLLM 0.32 sends them (tests/data/vllm-0.32 holds answers of a real 0.32
server to compare shapes with): GET /v1/models, POST /tokenize, /detokenize,
/v1/completions (token-id prompts, n, seed, one stop string,
include_stop_str_in_output, logprobs, prompt_logprobs,
return_tokens_as_token_ids) and /pooling (a scripted function of the tokens).
The numbers come from a real LlamaModel, so a remote engine pointed at it must
reproduce the in-process engine on the same GGUF.

For failure tests it can demand a Bearer key on /v1 paths (as vLLM's
--api-key does), answer the next requests with given statuses or drop their
connections, add a fixed delay to every answer, leave prompt_logprobs out (as
servers without the extension do), and stop.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engines.base import SampleParams, StopReason
from engines.llama import LlamaModel

PoolingFn = Callable[[list[int]], list[list[float]]]
DROP = "drop"  # a failure that closes the connection without an answer


class FakeVLLM:
    def __init__(
        self,
        model: LlamaModel,
        served: Sequence[str] = ("fake-model",),
        *,
        max_model_len: int | None = None,
        api_key: str | None = None,
        delay_s: float = 0.0,
        prompt_logprobs: bool = True,
        pooling: PoolingFn | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.model = model
        self.served = list(served)
        self.max_model_len = max_model_len or model.n_ctx
        self.api_key = api_key
        self.delay_s = delay_s
        self.prompt_logprobs = prompt_logprobs
        self.pooling = pooling
        self.failures: list[int | str] = []
        self.log: list[tuple[str, dict[str, Any] | None]] = []
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}/v1"

    def fail(self, *failures: int | str) -> None:
        """Answer the next requests with these statuses (or DROP them), in order."""
        with self._lock:
            self.failures.extend(failures)

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.log]

    def stop(self) -> None:
        """Stop as a killed server does: no new connections, open ones cut."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_ones, self.connections = list(self.connections), set()
        for conn in open_ones:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def __enter__(self) -> FakeVLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answers ----------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int | str, Any]:
        with self._lock:
            self.log.append((path, body if isinstance(body, dict) else None))
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            return failure, {"error": {"message": "injected failure", "type": "InternalServerError", "code": failure}}
        if self.api_key and path.startswith("/v1") and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        if self.delay_s:
            time.sleep(self.delay_s)
        if method == "GET" and path == "/v1/models":
            return 200, self._models()
        if method != "POST" or not isinstance(body, dict):
            return 404, {"detail": "Not Found"}
        if body.get("model") not in (None, *self.served):
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404)
        route = {
            "/tokenize": self._tokenize,
            "/detokenize": self._detokenize,
            "/v1/completions": self._completions,
            "/pooling": self._pool,
        }.get(path)
        if route is None:
            return 404, {"detail": "Not Found"}
        with self._lock:  # one llama.cpp context: requests take turns, as on one GPU
            return route(body)

    def _models(self) -> dict[str, Any]:
        cards = [
            {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": name, "parent": None}
            | {"max_model_len": self.max_model_len, "permission": []}
            for name in self.served
        ]
        return {"object": "list", "data": cards}

    def _tokenize(self, body: dict[str, Any]) -> tuple[int, Any]:
        if "messages" in body:
            text = self.model.render_chat(
                body["messages"], add_generation_prompt=body.get("add_generation_prompt", True)
            )
            tokens = self.model.tokenize(text)
        else:
            text = body["prompt"]
            tokens = (
                self.model.prompt_tokens(text) if body.get("add_special_tokens", True) else self.model.tokenize(text)
            )
        return 200, {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens, "token_strs": None}

    def _detokenize(self, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"prompt": self._text(body["tokens"])}

    def _text(self, tokens: Sequence[int]) -> str:
        """Tokens as text with special tokens spelled out (as vLLM's /detokenize does)."""
        out, run = [], []
        for token in tokens:
            if self.model.detokenize([token]) == "" and self.model.token_text(token):
                out.append(self.model.detokenize(run) + self.model.token_text(token))
                run = []
            else:
                run.append(token)
        return "".join(out) + self.model.detokenize(run)

    def _pool(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.pooling is None:
            return 400, _error("The model does not support Pooling API", "BadRequestError", 400)
        inputs = body["input"]
        batch = inputs if inputs and isinstance(inputs[0], list) else [inputs]
        data = [{"index": i, "object": "pooling", "data": self.pooling(tokens)} for i, tokens in enumerate(batch)]
        used = sum(len(t) for t in batch)
        return 200, {
            "id": "pool-fake",
            "object": "list",
            "created": 0,
            "model": body.get("model"),
            "data": data,
            "usage": {"prompt_tokens": used, "total_tokens": used, "completion_tokens": 0},
        }

    def _completions(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("temperature", 1.0) < 1e-5 and body.get("n", 1) > 1:  # vLLM's own check
            return 400, _error(f"n must be 1 when using greedy sampling, got {body['n']}.", "BadRequestError", 400)
        prompt = body["prompt"]
        prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
        max_tokens = body.get("max_tokens", 16)
        for tokens in prompts:
            if len(tokens) + max_tokens > self.max_model_len:
                message = (
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{len(tokens) + max_tokens} tokens."
                )
                return 400, _error(message, "BadRequestError", 400)
        choices: list[dict[str, Any]] = []
        used = 0
        for tokens in prompts:
            for choice in self._complete(tokens, body):
                choices.append({"index": len(choices), **choice})
                used += len(choice["logprobs"]["tokens"]) if choice["logprobs"] else 0
        n_prompt = sum(len(t) for t in prompts)
        return 200, {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 0,
            "model": body.get("model"),
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + used, "completion_tokens": used},
        }

    def _complete(self, tokens: list[int], body: dict[str, Any]) -> list[dict[str, Any]]:
        model = self.model
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        assert len(stops) <= 1, "the fake server supports one stop string"
        params = SampleParams(
            temperature=body.get("temperature", 1.0),
            top_p=body.get("top_p", 1.0),
            max_tokens=body.get("max_tokens", 16),
            seed=body.get("seed") or 0,
            delimiter=stops[0] if stops else None,
        )
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        seq = model.start(tokens)
        try:
            prompt_logprobs = self._prompt_logprobs(tokens) if body.get("prompt_logprobs") is not None else None
            drafts = model.sample([seq], body.get("n", 1), params)[0]
            choices = []
            for draft in drafts:
                model.release(draft.seq)
                text = draft.text
                stop_reason: str | None = None
                if draft.stop is StopReason.DELIMITER:
                    stop_reason = stops[0]
                    end = text.index(stop_reason)
                    text = text[: end + len(stop_reason)] if body.get("include_stop_str_in_output") else text[:end]
                choice: dict[str, Any] = {
                    "text": text,
                    "logprobs": None,
                    "finish_reason": "length" if draft.stop is StopReason.LENGTH else "stop",
                    "stop_reason": stop_reason,
                    "token_ids": None,
                    "prompt_logprobs": prompt_logprobs if self.prompt_logprobs else None,
                    "prompt_token_ids": None,
                }
                if body.get("logprobs") is not None:
                    choice["logprobs"] = self._logprobs(tokens, draft.tokens, draft.logprobs, body["logprobs"], as_ids)
                choices.append(choice)
            return choices
        finally:
            model.release(seq)

    def _prompt_logprobs(self, tokens: list[int]) -> list[dict[str, Any] | None]:
        first = self.model.start(tokens[:1])
        try:
            [scored] = self.model.score([(first, tokens[1:])])
            self.model.release(scored.seq)
        finally:
            self.model.release(first)
        return [None] + [
            {str(t): {"logprob": lp, "rank": None, "decoded_token": self.model.detokenize([t])}}
            for t, lp in zip(tokens[1:], scored.logprobs)
        ]

    def _logprobs(
        self, prompt: list[int], sampled: list[int], logprobs: list[float], top: int, as_ids: bool
    ) -> dict[str, Any]:
        def name(token: int) -> str:
            return f"token_id:{token}" if as_ids else self.model.detokenize([token])

        tops = []
        for i, (token, lp) in enumerate(zip(sampled, logprobs)):
            entry = {name(token): lp}
            if top > 0:
                entry |= {name(t): v for t, v in self._top(prompt + sampled[:i], top)}
            tops.append(entry)
        names = [name(t) for t in sampled]
        offsets = [sum(len(n) for n in names[:i]) for i in range(len(names))]
        return {"text_offset": offsets, "token_logprobs": logprobs, "tokens": names, "top_logprobs": tops}

    def _top(self, tokens: list[int], k: int) -> list[tuple[int, float]]:
        seq = self.model.start(tokens)
        try:
            vocab = list(range(self.model.n_vocab))
            row, children = self.model.next_token_logprobs([(seq, [])], vocab)
            for child in children:
                self.model.release(child)
        finally:
            self.model.release(seq)
        order = row[0].argsort()[::-1][:k]
        return [(int(t), float(row[0][t])) for t in order]


def _error(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _handler(fake: FakeVLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with fake._lock:
                fake.connections.add(self.connection)

        def finish(self) -> None:
            with fake._lock:
                fake.connections.discard(self.connection)
            with contextlib.suppress(OSError):  # the connection was cut by stop()
                super().finish()

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = fake.answer(method, self.path, headers, body)
            if status == DROP:
                self.close_connection = True
                self.connection.close()
                return
            data = json.dumps(answer).encode()
            try:
                self.send_response(int(status))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (a timeout) or stop() cut the connection
                self.close_connection = True

    return Handler


def main() -> None:
    """Serve a GGUF as the fake on a port of 127.0.0.1 until interrupted (for
    measuring a client against a server in another process)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("gguf")
    parser.add_argument("--served", default="fake-model")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    args = parser.parse_args()
    model = LlamaModel(args.gguf, n_seq_max=256, n_threads=1, flash_attn="off")
    fake = FakeVLLM(model, [args.served], delay_s=args.delay)
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
