"""The OpenAI-compatible server on the scripted engine, through the official
`openai` client and raw HTTP: models, whole and streamed completions, search
options, bad input, the API key, the queue's 429 and cancellation."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from liveserver import WallClock, live_server, wait_idle

from app.search import run
from app.search.events import Event, StepAccepted
from app.search.forced import ANSWER_CUE
from app.search.settings import SearchSettings
from app.serve.app import ServedPreset, create_app
from engines.testing.scripted import ARITHMETIC_QUESTION, Continuation, ScriptedEngines, scripted_engines

SPECS = "specs-local/scripted/specs"
MESSAGES = [{"role": "user", "content": ARITHMETIC_QUESTION}]


@dataclass
class Live:
    url: str
    engines: ScriptedEngines

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs = {"api_key": "unused", "timeout": 30, **kwargs}
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, **kwargs)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """Raw HTTP, for bodies the client would not send."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            text = response.read().decode()
            return response.status, dict(response.getheaders()), json.loads(text) if text else None
        finally:
            conn.close()

    def wait_idle(self, within: float) -> float:
        return wait_idle(self.url, within)


def serve(engines: ScriptedEngines, **kwargs: Any):
    served = ServedPreset("scripted", ("specs", "beam", "greedy"), SearchSettings())
    return live_server(create_app(served, engines, **kwargs))


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    engines = scripted_engines()
    with serve(engines) as url:
        yield Live(url, engines)


@pytest.fixture
def paced() -> Iterator[Live]:
    """Scripted models that take real time (about 2.5 s a search), one waiting slot."""
    engines = scripted_engines(clock=WallClock())
    with serve(engines, queue_size=1) as url:
        yield Live(url, engines)


def direct_steps(method: str = "specs", **settings: Any) -> list[dict[str, Any]]:
    events: list[Event] = []
    run(method, ARITHMETIC_QUESTION, scripted_engines(), SearchSettings(**settings), emit=events.append)
    return [
        {"step": e.step, "origin": e.origin, "text": e.text, "reward": e.reward, "score": e.merit}
        for e in events
        if isinstance(e, StepAccepted)
    ]


def test_models_lists_one_id_per_method_the_preset_first(live: Live) -> None:
    client = live.client()
    ids = [m.id for m in client.models.list()]
    assert ids == [SPECS, "specs-local/scripted/beam", "specs-local/scripted/greedy"]
    assert client.models.retrieve("specs-local/scripted/beam").owned_by == "specs-local"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("specs-local/scripted/rsd")


def test_a_whole_completion_has_the_steps_as_reasoning_and_the_final_step_as_content(live: Live) -> None:
    reply = live.client().chat.completions.create(model=SPECS, messages=MESSAGES)
    (choice,) = reply.choices
    steps = direct_steps()
    assert reply.model == SPECS and reply.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.reasoning_content == "".join(s["text"] for s in steps)
    assert choice.message.content == "The answer is \\boxed{42}."
    assert choice.finish_reason == "stop"
    specs = reply.specs
    assert specs["answer"] == "42" and specs["steps"] == steps
    assert specs["method"] == "specs" and specs["preset"] == "scripted" and not specs["cancelled"]
    stats = specs["stats"]
    assert stats["deferrals"] == 1 and stats["acceptance_rate"] == 0.5 and stats["steps"] == 4
    assert set(stats["models"]) == {"draft", "target", "reward"}
    drafted = stats["models"]["draft"]["generated"] + stats["models"]["target"]["generated"]
    assert reply.usage.completion_tokens == drafted > 0
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_stream_sends_each_step_as_it_is_accepted_then_the_answer(live: Live) -> None:
    whole = live.client().chat.completions.create(model=SPECS, messages=MESSAGES)
    chunks = list(live.client().chat.completions.create(model=SPECS, messages=MESSAGES, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant"
    reasoning = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    assert reasoning == [s["text"] for s in whole.specs["steps"]]
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.specs["steps"] == whole.specs["steps"] and last.specs["answer"] == "42"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_search_options_are_extra_body_fields(live: Live) -> None:
    client = live.client()
    reply = client.chat.completions.create(
        model="specs-local/scripted/beam",
        messages=MESSAGES,
        temperature=0.7,
        seed=4,
        extra_body={"n": 2, "beam_width": 2, "max_steps": 6, "answer_selection": "vote"},
    )
    settings = reply.specs["settings"]
    assert (settings["n"], settings["beam_width"], settings["temperature"], settings["seed"]) == (2, 2, 0.7, 4)
    assert settings["max_steps"] == 6 and settings["answer_selection"] == "vote"
    assert reply.specs["method"] == "beam"
    assert reply.specs["steps"] == direct_steps(
        "beam", n=2, beam_width=2, temperature=0.7, seed=4, max_steps=6, answer_selection="vote"
    )


def test_the_step_cap_ends_with_finish_reason_length(live: Live) -> None:
    reply = live.client().chat.completions.create(
        model=SPECS, messages=MESSAGES, extra_body={"max_steps": 1, "max_step_tokens": 5}
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.specs["stats"]["steps"] == 1 and reply.choices[0].message.content == "We need to"


def test_a_box_the_target_is_asked_for_ends_the_content() -> None:
    plan, end = "Add 12 and 30.\n\n", "So, 12 + 30 equals 42."
    unboxed = {
        "": (Continuation(plan, -0.1),),
        plan: (Continuation(end, -0.1, eos=True),),
        "The final answer is $\\boxed{": (Continuation("42}$.", -0.1),),
    }
    engines = scripted_engines(draft=unboxed, target=unboxed, rewards={}, default_reward=0.9)
    with serve(engines) as url:
        reply = (
            Live(url, engines)
            .client()
            .chat.completions.create(model=SPECS, messages=MESSAGES, extra_body={"tau_accept": -100})
        )
    message = reply.choices[0].message
    assert message.reasoning_content == plan
    assert message.content == end + ANSWER_CUE + "42}$."
    assert reply.specs["answer"] == "42" and reply.specs["stats"]["answer_forced"]


def test_fields_clients_send_by_default_are_accepted(live: Live) -> None:
    reply = live.client().chat.completions.create(
        model=SPECS,
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! Ask me a math question."},
            {"role": "user", "content": [{"type": "text", "text": ARITHMETIC_QUESTION}]},
        ],
        max_tokens=100,
        stop=["\n\n\n"],
        presence_penalty=0.0,
        frequency_penalty=0.0,
        user="someone",
    )
    assert reply.specs["answer"] == "42"


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict) and set(exc.body) == {"message", "type", "param", "code"}, exc.body
    return exc.body


@pytest.mark.parametrize(
    "kwargs, status, param, says",
    [
        ({"model": "specs-local/other/specs"}, 404, "model", "not served here"),
        ({"messages": [{"role": "user", "content": "   "}]}, 400, "messages", "question is empty"),
        ({"messages": [{"role": "user", "content": "1 + 1 = ? " * 4000}]}, 400, "messages", "32000"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, 400, "messages", "no user message"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "messages.0.content",
            "reads text only",
        ),
        ({"messages": []}, 400, "messages", "at least 1 item"),
        ({"extra_body": {"n": 0}}, 400, "n", "greater than or equal to 1"),
        ({"extra_body": {"n": "many"}}, 400, "n", "valid integer"),
        ({"extra_body": {"temperature": -1}}, 400, "temperature", "Invalid temperature"),
        ({"extra_body": {"n": 2, "beam_width": 4}}, 400, None, "cannot exceed n=2"),
        ({"extra_body": {"n": 64}}, 400, "n", "start the server with --n 64"),
        ({"extra_body": {"logprob_norm": "max"}}, 400, "logprob_norm", "'mean' or 'sum'"),
        ({"extra_body": {"bogus": 1}}, 400, "bogus", "Unrecognized request argument supplied: bogus"),
        ({"extra_body": {"stream": "often"}}, 400, "stream", "valid boolean"),
    ],
)
def test_bad_requests_get_an_openai_error_object_and_no_traceback(
    live: Live, kwargs: dict[str, Any], status: int, param: str | None, says: str, caplog
) -> None:
    request = {"model": SPECS, "messages": MESSAGES, **kwargs}
    with caplog.at_level(logging.INFO), pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(**request)
    assert caught.value.status_code == status
    error = error_of(caught.value)
    assert error["param"] == param and says in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in caught.value.response.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "body, says",
    [
        (b'{"model": "x", "messages": [', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(live: Live, body: bytes, says: str, caplog) -> None:
    with caplog.at_level(logging.INFO):
        status, _, reply = live.request("POST", "/v1/chat/completions", body)
    assert status == 400 and says in reply["error"]["message"] and reply["error"]["code"] == "invalid_json"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_body_over_the_limit_is_413(live: Live) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model=SPECS, messages=[{"role": "user", "content": "x" * (2 << 20)}])
    assert caught.value.status_code == 413
    assert error_of(caught.value)["code"] == "request_too_large"


def test_unknown_paths_and_methods_get_error_objects(live: Live) -> None:
    status, _, reply = live.request("GET", "/v1/completions")
    assert status == 404 and "/v1/chat/completions" in reply["error"]["message"]
    status, _, reply = live.request("GET", "/v1/chat/completions")
    assert status == 405 and set(reply["error"]) == {"message", "type", "param", "code"}


def test_health_says_whether_a_search_runs(live: Live) -> None:
    status, _, health = live.request("GET", "/health")
    assert status == 200 and health == {"status": "ok", "searching": False, "queued": 0}


def test_with_a_key_every_request_needs_it() -> None:
    engines = scripted_engines()
    served = ServedPreset("scripted", ("specs",), SearchSettings())
    with live_server(create_app(served, engines, api_key="s3cret")) as url:
        live = Live(url, engines)
        for key in ("wrong", "s3cre", "s3cret2", "S3CRET"):
            with pytest.raises(openai.AuthenticationError) as caught:
                live.client(api_key=key).models.list()
            assert error_of(caught.value)["code"] == "invalid_api_key"
        status, headers, _ = live.request("GET", "/health")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        status, _, _ = live.request("GET", "/health", headers={"Authorization": "Basic s3cret"})
        assert status == 401
        reply = live.client(api_key="s3cret").chat.completions.create(model=SPECS, messages=MESSAGES)
        assert reply.specs["answer"] == "42"


def test_a_full_queue_answers_429_with_retry_after(paced: Live) -> None:
    client = paced.client()
    running = client.chat.completions.create(model=SPECS, messages=MESSAGES, stream=True)
    next(iter(running))  # the search has begun
    waiting: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: waiting.update(reply=client.chat.completions.create(model=SPECS, messages=MESSAGES))
    )
    thread.start()
    deadline = time.monotonic() + 10
    while paced.request("GET", "/health")[2]["queued"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=SPECS, messages=MESSAGES)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert error_of(caught.value)["code"] == "rate_limit_exceeded"
    running.close()
    thread.join(30)
    assert waiting["reply"].specs["answer"] == "42" and not waiting["reply"].specs["cancelled"]


def test_closing_a_stream_stops_its_search_within_a_second(paced: Live) -> None:
    client = paced.client()
    stream = client.chat.completions.create(model=SPECS, messages=MESSAGES, stream=True)
    chunks = iter(stream)
    while not getattr(next(chunks).choices[0].delta, "reasoning_content", None):
        pass
    assert paced.request("GET", "/health")[2]["searching"]
    stream.close()
    assert paced.wait_idle(within=1.0) < 1.0
    assert paced.engines.live == 0
    reply = client.chat.completions.create(model=SPECS, messages=MESSAGES)
    assert reply.specs["answer"] == "42" and reply.specs["steps"] == direct_steps()
    assert paced.engines.live == 0


def test_a_client_that_gives_up_on_a_whole_completion_stops_its_search(paced: Live) -> None:
    with pytest.raises(openai.APITimeoutError):
        paced.client(timeout=0.5).chat.completions.create(model=SPECS, messages=MESSAGES)
    assert paced.wait_idle(within=1.0) < 1.0
    assert paced.engines.live == 0


def test_a_waiting_request_whose_client_leaves_is_dropped(paced: Live) -> None:
    client = paced.client()
    running = client.chat.completions.create(model=SPECS, messages=MESSAGES, stream=True)
    next(iter(running))
    with pytest.raises(openai.APITimeoutError):
        paced.client(timeout=0.3).chat.completions.create(model=SPECS, messages=MESSAGES)
    running.close()
    assert paced.wait_idle(within=2.0) < 2.0
    reply = client.chat.completions.create(model=SPECS, messages=MESSAGES)
    assert reply.specs["answer"] == "42"
