"""`specs-local serve` on real llama.cpp: tiny GGUFs answer as `solve --json`
does for the same seed, sequences are freed, the command starts and stops;
and one real-model run answering 42."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from liveserver import live_server, wait_idle
from test_cli_solve import ROOT, run_cli, write_catalog

from app.commands.common import Consent, RuntimeOptions
from app.commands.serve import exposure_warning, served_methods, serving
from app.config import load_catalog
from app.errors import UserError
from app.presets import resolve_preset
from app.search.settings import SearchSettings
from app.search.types import Engines

QUESTION = "What is 1 + 1?"
TINY = "specs-local/tiny/"


def open_app(preset: str, settings: SearchSettings, **kwargs: Any):
    chosen = resolve_preset(load_catalog(), preset)
    return serving(
        chosen,
        settings,
        served_methods(chosen, None),
        runtime=RuntimeOptions(threads=1),
        consent=Consent(),
        queue_size=kwargs.pop("queue_size", 4),
        api_key=kwargs.pop("api_key", None),
    )


def live_sequences(engines: Engines) -> int:
    models = {id(m): m for m in (engines.target, engines.draft) if m is not None}
    return sum(m.live_sequences for m in models.values())


class Tiny:
    def __init__(self, url: str, engines: Engines) -> None:
        self.url = url
        self.engines = engines
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_qwen: Path) -> Iterator[Tiny]:
    catalog = write_catalog(tmp_path_factory.mktemp("serve") / "models.toml", tiny_qwen, tiny_qwen)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECS_LOCAL_CONFIG", str(catalog))
        mp.setenv("SPECS_LOCAL_THREADS", "1")
        chosen = resolve_preset(load_catalog(), "tiny")
        with open_app("tiny", SearchSettings(**chosen.preset.search)) as app, live_server(app) as url:
            yield Tiny(url, app.state.worker.engines)


def solve_json(capsys: pytest.CaptureFixture[str], method: str, seed: int) -> dict[str, Any]:
    code, out, err = run_cli(
        ["solve", QUESTION, "--preset", "tiny", "--method", method, "--seed", str(seed), "--json"], capsys
    )
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("method, seed", [("specs", 3), ("beam", 5), ("greedy", 0)])
def test_replies_match_solve_json_for_the_same_seed(tiny: Tiny, method: str, seed: int, capsys) -> None:
    solved = solve_json(capsys, method, seed)
    request = {"model": TINY + method, "messages": [{"role": "user", "content": QUESTION}], "seed": seed}

    whole = tiny.client.chat.completions.create(**request)
    message = whole.choices[0].message
    assert whole.specs["steps"] == solved["steps"] and whole.specs["answer"] == solved["answer"]
    assert message.reasoning_content == "".join(step["text"] for step in solved["steps"])
    assert message.reasoning_content + message.content == solved["solution"]
    assert whole.choices[0].finish_reason in ("stop", "length")

    chunks = list(tiny.client.chat.completions.create(**request, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)] == [
        step["text"] for step in solved["steps"]
    ]
    assert "".join(d.content or "" for d in deltas) == message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].specs["steps"] == solved["steps"]
    assert live_sequences(tiny.engines) == 0


def test_a_closed_stream_frees_its_sequences_and_the_next_request_runs_normally(tiny: Tiny, capsys) -> None:
    long = {"max_steps": 40, "max_step_tokens": 64, "seed": 3}
    stream = tiny.client.chat.completions.create(
        model=TINY + "specs", messages=[{"role": "user", "content": QUESTION}], stream=True, extra_body=long
    )
    chunks = iter(stream)
    while not getattr(next(chunks).choices[0].delta, "reasoning_content", None):
        pass
    stream.close()
    wait_idle(tiny.url, within=5)
    assert live_sequences(tiny.engines) == 0
    solved = solve_json(capsys, "specs", 3)
    reply = tiny.client.chat.completions.create(
        model=TINY + "specs", messages=[{"role": "user", "content": QUESTION}], seed=3
    )
    assert reply.specs["steps"] == solved["steps"]
    assert live_sequences(tiny.engines) == 0


def test_a_question_longer_than_the_context_is_400(tiny: Tiny) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tiny.client.chat.completions.create(
            model=TINY + "specs", messages=[{"role": "user", "content": "add these " * 400}], stream=True
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded" and "512" in error["message"]
    assert live_sequences(tiny.engines) == 0


def test_served_methods_are_those_the_preset_can_run(tmp_path: Path, tiny_qwen: Path, monkeypatch) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        f'[models.tiny-target]\npath = "{tiny_qwen}"\nfile = "{tiny_qwen.name}"\ncontext = 512\n'
        '[presets.solo]\ntarget = "tiny-target"\nmethod = "beam"\n'
        'reward = { kind = "judge", model = "tiny-target" }\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    solo = resolve_preset(load_catalog(), "solo")
    assert served_methods(solo, None) == ["beam", "best-of-n", "greedy"]
    assert served_methods(solo, "greedy") == ["greedy"]
    with pytest.raises(UserError, match="needs a draft model"):
        served_methods(solo, "specs")


def test_listening_beyond_loopback_without_a_key_warns() -> None:
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None
    assert exposure_warning("0.0.0.0", "key") is None
    for host in ("0.0.0.0", "192.168.1.20", "my-box.local"):
        warning = exposure_warning(host, None)
        assert warning is not None and "--api-key" in warning and host in warning


def read_until(process: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """stderr of `process` until it holds `marker` (unbuffered, so select sees every byte)."""
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and process.poll() is None, seen.decode()
        if select.select([process.stderr], [], [], left)[0]:
            seen += os.read(process.stderr.fileno(), 4096)
    return seen.decode()


def test_the_command_says_where_it_listens_checks_the_key_and_stops_on_ctrl_c(tmp_path: Path, tiny_qwen: Path) -> None:
    catalog = write_catalog(tmp_path / "models.toml", tiny_qwen, tiny_qwen)
    env = {**os.environ, "SPECS_LOCAL_CONFIG": str(catalog), "SPECS_LOCAL_API_KEY": "k3y", "SPECS_LOCAL_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--preset", "tiny", "--port", "0", "--method", "greedy"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        said = read_until(process, "Ctrl-C stops it.", timeout=60)
        head = next(line for line in said.splitlines() if "serves preset tiny at" in line)
        url = head.rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert "model specs-local/tiny/greedy" in said and "warning" not in said
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key="k3y", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["specs-local/tiny/greedy"]
        reply = client.chat.completions.create(
            model="specs-local/tiny/greedy", messages=[{"role": "user", "content": QUESTION}]
        )
        assert reply.specs["method"] == "greedy"
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=30)[1].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Stopped." in err and "Traceback" not in err


def test_a_taken_port_is_one_sentence_and_exit_2(tiny_qwen: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(write_catalog(tmp_path / "models.toml", tiny_qwen, tiny_qwen)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _out, err = run_cli(["serve", "--preset", "tiny", "--port", str(port)], capsys)
    assert code == 2 and f"Cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    code, _out, err = run_cli(["serve", "--preset", "tiny", "--port", "70000"], capsys)
    assert code == 2 and "--port" in err


@pytest.mark.real
def test_real_small_model_served_answers_42(dev_model_small: Path, tmp_path: Path, monkeypatch) -> None:
    """The cpu-dev preset with the 0.5B development model in all three roles,
    as the CLI's real-model test runs it, asked through the openai client."""
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[presets.cpu-dev]\ntarget = "qwen2.5-coder-0.5b-instruct"\n'
        'reward = { kind = "judge", model = "qwen2.5-coder-0.5b-instruct" }\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SPECS_LOCAL_CONFIG", str(catalog))
    monkeypatch.setenv("SPECS_LOCAL_MODELS_DIR", str(dev_model_small.parent))
    chosen = resolve_preset(load_catalog(), "cpu-dev")
    with open_app("cpu-dev", SearchSettings(**chosen.preset.search)) as app, live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        reply = client.chat.completions.create(
            model="specs-local/cpu-dev/specs",
            messages=[{"role": "user", "content": "What is 12 + 30?"}],
            seed=0,
            extra_body={"max_steps": 6},
        )
    assert reply.specs["answer"] == "42", reply.choices[0].message
    assert "\\boxed{42}" in reply.choices[0].message.content
    assert reply.specs["stats"]["models"]["draft"]["generated"] > 0
