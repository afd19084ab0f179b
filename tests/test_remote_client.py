"""The HTTP side of the remote engine against the loopback fake: retries and
back-off, refusals, keys, TLS, several servers, timeouts and cancellation."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fakevllm import DROP, FakeVLLM

from engines.base import Cancelled, SampleParams, ServerError
from engines.remote.client import RetryPolicy, ServerPool, ServerRefused
from engines.remote.model import RemoteModel


@pytest.fixture
def tiny_model(tiny_qwen, open_model):
    return open_model(tiny_qwen, n_seq_max=32)


@pytest.fixture
def server(tiny_model):
    with FakeVLLM(tiny_model, served=["tiny"]) as fake:
        yield fake


def pool(*urls: str, attempts: int = 4, timeout_s: float = 20, **kwargs) -> tuple[ServerPool, list[float]]:
    slept: list[float] = []
    policy = RetryPolicy(attempts=attempts, backoff_s=0.5, timeout_s=timeout_s, down_s=kwargs.pop("down_s", 10.0))
    return ServerPool(list(urls), policy=policy, sleep=slept.append, **kwargs), slept


def test_5xx_and_dropped_connections_are_retried_with_doubling_back_off(server) -> None:
    servers, slept = pool(server.url)
    server.fail(DROP, 503, 500)
    answer = servers.call("GET", "models")
    assert answer["data"][0]["id"] == "tiny"
    assert slept == [0.5, 1.0, 2.0]
    assert server.paths() == ["/v1/models"] * 4
    # A kept-alive connection the server closed is replaced at once, without a try or a wait.
    server.fail(DROP)
    servers.call("GET", "models")
    assert slept == [0.5, 1.0, 2.0] and server.paths() == ["/v1/models"] * 6


def test_a_server_failing_every_try_is_named_with_what_it_said(server) -> None:
    servers, slept = pool(server.url, attempts=3)
    server.fail(502, 502, 502)
    with pytest.raises(ServerError, match=rf"server at {server.url} answered 502 \(injected failure\) after 3 tries"):
        servers.call("GET", "models")
    assert len(slept) == 2


def test_a_4xx_is_not_retried_and_carries_the_servers_message(server) -> None:
    servers, slept = pool(server.url)
    with pytest.raises(ServerRefused, match="does not exist") as caught:
        servers.call("POST", "completions", {"model": "nope", "prompt": [1]})
    assert caught.value.status == 404 and slept == []


def test_bearer_key_from_the_caller_and_401_said_in_one_sentence(tiny_model) -> None:
    with FakeVLLM(tiny_model, served=["tiny"], api_key="sekrit") as fake:
        without, _ = pool(fake.url)
        with pytest.raises(ServerRefused, match=r"unauthorized \(401\); set the API key .* SPECS_LOCAL_API_KEY"):
            without.call("GET", "models")
        keyed, _ = pool(fake.url, api_key="sekrit")
        assert keyed.call("GET", "models")["data"][0]["id"] == "tiny"


def test_an_unreachable_server_is_said_to_refuse_the_connection(server) -> None:
    url = server.url
    server.stop()
    servers, _ = pool(url, attempts=2)
    with pytest.raises(ServerError, match=rf"{url} refused the connection after 2 tries; check that it is running"):
        servers.call("GET", "models")


def test_a_slow_server_times_out_without_retries(tiny_model) -> None:
    with FakeVLLM(tiny_model, served=["tiny"], delay_s=1.0) as fake:
        servers, slept = pool(fake.url, timeout_s=0.2)
        with pytest.raises(ServerError, match=r"did not answer within 0.2 s"):
            servers.call("GET", "models")
        assert slept == []


def test_several_servers_share_the_requests_and_cover_for_a_dead_one(tiny_qwen, open_model) -> None:
    fakes = [FakeVLLM(open_model(tiny_qwen, n_seq_max=8), served=["tiny"], delay_s=0.05) for _ in range(2)]
    try:
        servers, _ = pool(*(f.url for f in fakes))
        servers.call_all([("completions", {"model": "tiny", "prompt": [1, 2], "max_tokens": 1})] * 8)
        counts = [f.paths().count("/v1/completions") for f in fakes]
        assert sum(counts) == 8 and min(counts) >= 2
        fakes[0].stop()
        servers.call_all([("completions", {"model": "tiny", "prompt": [1, 2], "max_tokens": 1})] * 4)
        assert fakes[1].paths().count("/v1/completions") == counts[1] + 4
    finally:
        fakes[1].stop()


def test_waiting_for_answers_stops_when_asked(tiny_model) -> None:
    with FakeVLLM(tiny_model, served=["tiny"], delay_s=0.5) as fake:
        servers, _ = pool(fake.url)
        asked = time.monotonic()
        with pytest.raises(Cancelled):
            servers.call_all(
                [("completions", {"model": "tiny", "prompt": [1], "max_tokens": 1})] * 2,
                should_stop=lambda: time.monotonic() - asked > 0.1,
            )
        assert time.monotonic() - asked < 0.45


def test_a_server_dying_mid_use_raises_a_server_error_naming_it(server) -> None:
    servers, _ = pool(server.url, attempts=2)
    model = RemoteModel(servers, "tiny")
    seq = model.start([1, 2, 3])
    model.sample([seq], 1, SampleParams(max_tokens=2))
    server.stop()
    with pytest.raises(ServerError, match=rf"{server.url} refused the connection"):
        model.sample([seq], 1, SampleParams(max_tokens=2))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_with_the_servers_certificate_trusted(tiny_model, certificate, monkeypatch) -> None:
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FakeVLLM(tiny_model, served=["tiny"], tls=tls) as fake:
        assert fake.url.startswith("https://")
        untrusting, _ = pool(fake.url, attempts=1)
        with pytest.raises(ServerError, match="TLS handshake"):
            untrusting.call("GET", "models")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusting, _ = pool(fake.url, attempts=1)
        assert trusting.call("GET", "models")["data"][0]["id"] == "tiny"


def test_concurrent_callers_keep_their_own_connections(server) -> None:
    servers, _ = pool(server.url)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(5):
                servers.call("GET", "models")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and server.paths().count("/v1/models") == 20
