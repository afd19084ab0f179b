"""The remote engine against a loopback vLLM stand-in that computes with llama.cpp:
it must give what the in-process engine gives on the same GGUF, and its
requests must be the ones vLLM documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakevllm import FakeVLLM

from engines.base import ContextFullError, EngineError, SampleParams, ServerError, StopReason
from engines.remote.client import RetryPolicy, ServerPool
from engines.remote.model import RemoteModel

DATA = Path(__file__).parent / "data" / "vllm-0.32"
QUICK = RetryPolicy(attempts=3, backoff_s=0.001, timeout_s=20)


@pytest.fixture
def local(tiny_qwen, open_model):
    return open_model(tiny_qwen, n_seq_max=16)


@pytest.fixture
def server(tiny_qwen, open_model):
    with FakeVLLM(open_model(tiny_qwen, n_seq_max=32), served=["tiny"]) as fake:
        yield fake


def remote(*servers: FakeVLLM, served: str = "tiny", **kwargs) -> RemoteModel:
    return RemoteModel(ServerPool([s.url for s in servers], policy=QUICK), served, **kwargs)


def test_text_goes_through_the_servers_tokenizer_and_template(server, local) -> None:
    model = remote(server)
    text = "Tom has 3 apples.\n\nHe buys 4 more."
    assert model.tokenize(text) == local.tokenize(text)
    assert model.detokenize(local.tokenize(text)) == text
    chat = model.format_chat("Be brief.", "What is 12 + 30?")
    assert chat == local.format_chat("Be brief.", "What is 12 + 30?")
    assert model.prompt_tokens(chat) == local.prompt_tokens(chat)
    assert model.n_ctx == local.n_ctx


def test_greedy_steps_and_logprobs_equal_the_local_engines(server, local) -> None:
    model = remote(server)
    prompt = local.format_chat("Be brief.", "What is 12 + 30?")
    params = SampleParams(temperature=0.0, max_tokens=24)
    mine, theirs = model.start(prompt), local.start(prompt)
    for _ in range(3):  # three steps, each continuing the last
        [[got]] = model.sample([mine], 1, params)
        [[want]] = local.sample([theirs], 1, params)
        assert got.tokens == want.tokens
        assert got.stop == want.stop
        assert got.text == want.text
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)
        assert got.seq.tokens == want.seq.tokens
        mine, theirs = got.seq, want.seq
        if got.stop is not StopReason.DELIMITER:
            break


def test_seeded_samples_repeat_and_differ_between_beams(server) -> None:
    model = remote(server)
    a, b = model.start("Tom has"), model.start("Ann has")
    params = SampleParams(temperature=1.0, max_tokens=8, seed=3)
    first = model.sample([a, b], 3, params)
    again = model.sample([a, b], 3, params)
    assert [[d.tokens for d in row] for row in first] == [[d.tokens for d in row] for row in again]
    assert len(first) == 2 and all(len(row) == 3 for row in first)
    seeds = [body["seed"] for path, body in server.log if path == "/v1/completions" and body]
    assert len(set(seeds[:2])) == 2  # each sequence its own seed


def test_teacher_forcing_equals_the_local_engine(server, local) -> None:
    model = remote(server)
    prompt = local.prompt_tokens("Tom has 3 apples. He buys 4 more.")
    cands = [local.tokenize(" So 7."), local.tokenize(" So 8 apples."), []]
    mine = model.start(prompt)
    scored = model.score([(mine, c) for c in cands])
    base = local.start(prompt)
    want = local.score([(base, c) for c in cands])
    for got, expected, cand in zip(scored, want, cands):
        # The fake decodes the prompt in other batches than `local` does; llama.cpp's
        # numbers move by ~1e-4 with batching.
        assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-3)
        assert got.seq.tokens == tuple(prompt + cand)
    # One request for all candidates: prompt_logprobs, one generated token.
    [body] = [b for p, b in server.log if p == "/v1/completions"]
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
    assert body["prompt"] == [prompt + c for c in cands if c]


def test_next_token_logprobs_read_the_top_ones_and_the_rest_exactly(server, local) -> None:
    model = remote(server, top_logprobs=2)
    prompt = local.prompt_tokens("Is 3 + 4 = 7? Answer:")
    ids = local.tokenize(" Yes") + local.tokenize(" No") + local.tokenize("+")
    table, children = model.next_token_logprobs([(model.start(prompt), [])], ids)
    seq = local.start(prompt)
    want, _ = local.next_token_logprobs([(seq, [])], ids)
    np.testing.assert_allclose(table, want, atol=1e-3)
    assert children[0].tokens == tuple(prompt)


def test_sequences_are_token_lists(server) -> None:
    model = remote(server)
    seq = model.start([1, 2, 3])
    child = model.fork(seq)
    model.extend(child, [4, 5])
    model.truncate(seq, 2)
    assert (seq.n_tokens, child.tokens) == (2, (1, 2, 3, 4, 5))
    model.release(child)
    with pytest.raises(EngineError, match="released"):
        model.extend(child, [6])
    with pytest.raises(ContextFullError, match="holds"):
        model.extend(seq, [1] * model.n_ctx)
    assert not [p for p in server.paths() if p == "/v1/completions"]  # none of it asked the server


def test_sampling_pins_every_knob_vllm_could_default(server) -> None:
    model = remote(server)
    model.sample([model.start([1, 2, 3])], 2, SampleParams(temperature=0.5, top_p=0.9, max_tokens=5, seed=1))
    [body] = [b for p, b in server.log if p == "/v1/completions"]
    assert body["n"] == 2 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["stop"] == ["\n\n"] and body["include_stop_str_in_output"] is True
    assert body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.0, 0.0)


def test_the_fakes_answers_have_the_shape_of_real_vllm_answers(server) -> None:
    """Keys of a real vLLM 0.32 server's answers (recorded) against the fake's."""
    model = remote(server)
    seq = model.start([1, 2, 3])
    model.sample([seq], 2, SampleParams(max_tokens=4))
    model.score([(seq, [4, 5])])
    answers = {}
    for path, body in list(server.log):
        if path == "/v1/completions" and body:
            _, answer = server.answer("POST", path, {}, body)
            answers["prompt_logprobs" if body.get("prompt_logprobs") is not None else "sampled"] = answer
    real_sampled = json.loads((DATA / "completion-sampled.json").read_text())
    real_scored = json.loads((DATA / "completion-prompt-logprobs.json").read_text())
    for fake, real in ((answers["sampled"], real_sampled), (answers["prompt_logprobs"], real_scored)):
        assert set(fake) <= set(real)
        assert set(fake["choices"][0]) <= set(real["choices"][0])
        if fake["choices"][0]["logprobs"]:
            assert set(fake["choices"][0]["logprobs"]) == set(real["choices"][0]["logprobs"])
    real_entry = real_scored["choices"][0]["prompt_logprobs"][1]
    fake_entry = answers["prompt_logprobs"]["choices"][0]["prompt_logprobs"][1]
    assert real_scored["choices"][0]["prompt_logprobs"][0] is None
    assert set(next(iter(fake_entry.values()))) == set(next(iter(real_entry.values())))


def test_a_real_vllm_answer_parses(server) -> None:
    """The recorded answers of a real server, fed through the parser."""
    from engines.remote.model import _sampled, _stop_reason, prompt_row

    sampled = json.loads((DATA / "completion-sampled.json").read_text())["choices"][0]
    tokens, logprobs = _sampled(sampled, ["real"])
    assert tokens[-1] == 151645 and _stop_reason(sampled) is StopReason.EOS  # <|im_end|> ends it, kept
    assert len(logprobs) == len(tokens)
    stopped = json.loads((DATA / "completion-stop-string.json").read_text())["choices"][0]
    assert _stop_reason(stopped) is StopReason.DELIMITER and stopped["text"].endswith("\n\n")
    scored = json.loads((DATA / "completion-prompt-logprobs.json").read_text())["choices"][1]
    prompt = [151644, 8948, 198, 50, 151645]
    row = prompt_row(prompt, scored, ["real"])
    assert row[0] == 0.0 and row[-1] == pytest.approx(-16.64173698425293)


def test_context_and_parameters_are_checked_before_a_request(server) -> None:
    model = remote(server, n_ctx=64)
    assert model.n_ctx == 64
    full = model.start([1] * 64)
    with pytest.raises(ContextFullError, match="no room"):
        model.sample([full], 1, SampleParams())
    with pytest.raises(ValueError, match="k must be"):
        model.sample([full], 0, SampleParams())
    with pytest.raises(ServerError, match=r"does not serve 'other'.*tiny"):
        remote(server, served="other")


def test_greedy_asks_for_one_continuation_and_hands_back_k(server) -> None:
    """vLLM refuses n > 1 at temperature 0 (as the fake does); k greedy drafts are one."""
    model = remote(server)
    [drafts] = model.sample([model.start([1, 2, 3])], 3, SampleParams(temperature=0.0, max_tokens=4))
    [body] = [b for p, b in server.log if p == "/v1/completions"]
    assert body["n"] == 1
    assert len(drafts) == 3 and len({d.seq for d in drafts}) == 3
    assert all(d.tokens == drafts[0].tokens and d.seq.tokens == drafts[0].seq.tokens for d in drafts)


def test_the_remote_engine_loads_no_llama_cpp() -> None:
    """A machine that only talks to servers needs no llama.cpp build for the engine itself."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import engines.remote.checks, engines.remote.client, engines.remote.model, engines.remote.reward\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'textual'))))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_fakes_other_answers_have_the_shape_of_real_ones(server) -> None:
    _, models = server.answer("GET", "/v1/models", {}, None)
    real_models = json.loads((DATA / "models.json").read_text())
    assert set(models) == set(real_models) and set(models["data"][0]) <= set(real_models["data"][0])
    _, tokenized = server.answer("POST", "/tokenize", {}, {"messages": [{"role": "user", "content": "Hi"}]})
    assert set(tokenized) == set(json.loads((DATA / "tokenize-chat.json").read_text()))
    _, detokenized = server.answer("POST", "/detokenize", {}, {"tokens": [1, 2]})
    assert set(detokenized) == set(json.loads((DATA / "detokenize.json").read_text()))
    status, missing = server.answer("POST", "/v1/completions", {}, {"model": "nope", "prompt": [1]})
    real_error = json.loads((DATA / "error-unknown-model.json").read_text())
    assert status == 404 and set(missing["error"]) == set(real_error["error"])


def test_a_real_refusal_is_said_with_the_servers_own_message() -> None:
    from engines.remote.client import _refusal

    body = (DATA / "error-unknown-model.json").read_bytes()
    assert str(_refusal("http://h/v1", 404, body)) == (
        "the server at http://h/v1 refused the request (404: The model `nope` does not exist. "
        "Valid aliases: qwen-0.5b.)."
    )
