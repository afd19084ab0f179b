"""Stopping inside a llama.cpp decode on tiny GGUFs: a prompt's prefill, a
teacher-forced chunk and a catch-up stop at the next graph node once
`should_stop` says so, and the model is then exactly as a fresh one."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp as L
import pytest

from engines import _native
from engines.base import SYSTEM_PROMPT, Cancelled, ContextFullError, ModelUsage, RewardQuery, SampleParams
from engines.llama import LlamaModel, LlamaSeq
from engines.reward import JudgeReward

PROMPT = list(range(20, 120))  # 100 tokens: one decode at the default n_batch
CANDIDATES = [[200 + j] + list(range(30, 70)) for j in range(4)]  # 4 x 41 tokens, distinct from the first
PARAMS = SampleParams(temperature=0.8, max_tokens=12, seed=3, delimiter=None)


@pytest.fixture
def qwen(tiny_qwen: Path, open_model) -> LlamaModel:
    return open_model(tiny_qwen, n_seq_max=8)


class StopInDecode:
    """Says stop at the second graph node of the first decode that starts once
    `usage` counts `rows` decoded rows: the first question after that is the
    check before the decode, the next ones come from inside llama.cpp."""

    def __init__(self, usage: ModelUsage, rows: int = 0) -> None:
        self.usage, self.rows, self.asked = usage, rows, 0

    def __call__(self) -> bool:
        if self.usage.decoded_rows < self.rows:
            return False
        self.asked += 1
        return self.asked > 2


def cells(model: LlamaModel) -> dict[int, int]:
    """Cached positions per sequence id, from llama.cpp's memory (ids holding none left out)."""
    memory = model._native.memory
    return {
        i: L.llama_memory_seq_pos_max(memory, i) + 1
        for i in range(model.n_seq_max)
        if L.llama_memory_seq_pos_max(memory, i) >= 0
    }


def assert_consistent(model: LlamaModel) -> None:
    """The cache holds exactly what the live sequences say, and every other id is free."""
    live = {seq._id: seq._n_cached for seq in model._live if seq._n_cached}
    assert cells(model) == live
    assert sorted(model._free_ids + [seq._id for seq in model._live]) == list(range(model.n_seq_max))


def request(model: LlamaModel, prompt: list[int] = PROMPT) -> tuple[list[list[int]], list[list[float]]]:
    """A new request on `model`: a prompt, drafts of it, and their scores; everything released after."""
    beam = model.start(prompt)
    [drafts] = model.sample([beam], 3, PARAMS)
    scored = model.score([(beam, d.tokens) for d in drafts])
    result = [d.tokens for d in drafts], [list(s.logprobs) for s in scored]
    for seq in [beam, *(d.seq for d in drafts), *(s.seq for s in scored)]:
        model.release(seq)
    return result


def test_a_prefill_stops_inside_its_decode_and_leaves_no_trace(qwen: LlamaModel, tiny_qwen: Path, open_model) -> None:
    stop = StopInDecode(qwen.usage)
    with pytest.raises(Cancelled):
        qwen.start(PROMPT, should_stop=stop)
    assert stop.asked == 3  # stopped at the first node it was told to, asked nothing after
    assert qwen.usage.decoded_rows == 0  # the decode did not finish
    assert qwen.live_sequences == 0 and cells(qwen) == {}
    assert_consistent(qwen)
    assert request(qwen) == request(open_model(tiny_qwen, n_seq_max=8))


def test_a_prefill_in_chunks_forgets_the_chunks_it_finished(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8, n_batch=32)
    stop = StopInDecode(model.usage, 64)  # inside the third of four chunks
    with pytest.raises(Cancelled):
        model.start(PROMPT, should_stop=stop)
    assert stop.asked == 3
    assert model.usage.decoded_rows == model.usage.prefilled == 64
    # llama.cpp drops only the stopped chunk's cells; the engine drops the two before it.
    assert cells(model) == {}
    assert_consistent(model)
    assert request(model) == request(open_model(tiny_qwen, n_seq_max=8, n_batch=32))


def extended_beam(model: LlamaModel) -> LlamaSeq:
    """The prompt, its last 40 tokens not decoded yet (scoring decodes them first, on the beam's own id)."""
    beam = model.start(PROMPT[:60])
    model.extend(beam, PROMPT[60:])
    return beam


def test_teacher_forcing_stops_inside_a_chunk_and_its_parents_stay_usable(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8)
    beam = extended_beam(model)
    start = model.usage.decoded_rows
    # 40 tail rows (on the beam's id) + 4 x 41 candidate rows (none shared), in
    # chunks of up to 64 output rows: stop inside the second chunk.
    stop = StopInDecode(model.usage, start + 1)
    with pytest.raises(Cancelled):
        model.score([(beam, c) for c in CANDIDATES], should_stop=stop)
    assert stop.asked == 3
    assert start < model.usage.decoded_rows < start + 40 + 4 * 41
    assert model.live_sequences == 1 and beam._n_cached == 60
    assert_consistent(model)

    fresh = open_model(tiny_qwen, n_seq_max=8)
    fresh_beam = extended_beam(fresh)
    scored = model.score([(beam, c) for c in CANDIDATES])
    expected = fresh.score([(fresh_beam, c) for c in CANDIDATES])
    assert [s.logprobs for s in scored] == [e.logprobs for e in expected]


def test_shared_rows_are_forgotten_for_every_sequence_they_carry(tiny_qwen: Path, open_model) -> None:
    # Candidates with a common start share their rows (one row, several
    # sequence ids); llama.cpp forgets a stopped row for its first id only.
    shared = [list(range(30, 90)) + [200 + j] for j in range(3)]
    model = open_model(tiny_qwen, n_seq_max=8)
    beam = model.start(PROMPT)
    stop = StopInDecode(model.usage, model.usage.decoded_rows)
    with pytest.raises(Cancelled):
        model.score([(beam, c) for c in shared], should_stop=stop)
    assert stop.asked == 3
    assert model.live_sequences == 1
    assert_consistent(model)
    fresh = open_model(tiny_qwen, n_seq_max=8)
    fresh_beam = fresh.start(PROMPT)
    scored = model.score([(beam, c) for c in shared])
    expected = fresh.score([(fresh_beam, c) for c in shared])
    assert [s.logprobs for s in scored] == [e.logprobs for e in expected]


def test_a_catch_up_before_sampling_stops_inside_its_decode(tiny_qwen: Path, open_model) -> None:
    model = open_model(tiny_qwen, n_seq_max=8, n_batch=32)
    beam = model.start(PROMPT[:10])
    model.extend(beam, PROMPT[10:])
    stop = StopInDecode(model.usage, model.usage.decoded_rows + 64)  # inside the third of three chunks
    with pytest.raises(Cancelled):
        model.sample([beam], 3, PARAMS, should_stop=stop)
    assert stop.asked == 3
    assert model.live_sequences == 1 and beam._n_cached == 10
    assert_consistent(model)  # the two chunks that finished are forgotten too
    [drafts] = model.sample([beam], 3, PARAMS)
    fresh = open_model(tiny_qwen, n_seq_max=8, n_batch=32)
    [expected] = fresh.sample([fresh.start(PROMPT)], 3, PARAMS)
    assert [(d.tokens, d.logprobs) for d in drafts] == [(e.tokens, e.logprobs) for e in expected]


def test_short_decodes_are_checked_only_between_decodes(qwen: LlamaModel) -> None:
    asked = [0]

    def count() -> bool:
        asked[0] += 1
        return False

    seq = qwen.start(PROMPT[: _native.ABORTABLE_ROWS - 1], should_stop=count)
    assert asked[0] == 1
    [[draft]] = qwen.sample([seq], 1, SampleParams(max_tokens=8, seed=2, delimiter=None), should_stop=count)
    assert len(draft.tokens) == 8
    assert asked[0] <= 1 + 2 * 8  # before each token and each decode, never inside one
    asked[0] = 0
    qwen.start(PROMPT[: _native.ABORTABLE_ROWS], should_stop=count)
    assert asked[0] > 10  # once before the decode, then after every graph node


def test_an_error_in_should_stop_comes_out_of_the_call(qwen: LlamaModel) -> None:
    asked = [0]

    def broken() -> bool:
        asked[0] += 1
        if asked[0] == 3:
            raise RuntimeError("the stop flag is gone")
        return False

    with pytest.raises(RuntimeError, match="the stop flag is gone"):
        qwen.start(PROMPT, should_stop=broken)
    assert asked[0] == 3
    assert qwen.live_sequences == 0
    assert_consistent(qwen)


class Pressed(Exception):
    """What the program's own SIGINT handler raises in these tests."""


def press_ctrl_c_inside_the_decode() -> Callable[[], bool]:
    """A should_stop that never says stop, and sends SIGINT when it is asked from inside the decode."""
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        if asked[0] == 2:
            signal.raise_signal(signal.SIGINT)
        return False

    return should_stop


@pytest.mark.parametrize("handler_raises", [True, False])
def test_ctrl_c_stops_a_decode_then_reaches_the_programs_handler(qwen: LlamaModel, handler_raises: bool) -> None:
    # The main thread runs Python's signal handlers inside the abort callback,
    # where an exception would be lost: the handler must run after the decode.
    pressed: list[int] = []

    def handler(signum: int, frame: object) -> None:
        pressed.append(signum)
        if handler_raises:  # like KeyboardInterrupt
            raise Pressed()
        # else like `solve`'s first Ctrl-C: it only asks the search to stop

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(Pressed if handler_raises else Cancelled):
            qwen.start(PROMPT, should_stop=press_ctrl_c_inside_the_decode())
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert pressed == [signal.SIGINT]
    assert qwen.usage.decoded_rows == 0  # the decode stopped
    assert qwen.live_sequences == 0
    assert_consistent(qwen)


def test_a_stopped_decode_is_no_error_in_the_log(qwen: LlamaModel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="llama.cpp"):
        with pytest.raises(Cancelled):
            qwen.start(PROMPT, should_stop=StopInDecode(qwen.usage))
        said = [r for r in caplog.records if r.name == "llama.cpp"]
        assert any("failed to compute graph" in r.getMessage() for r in said)
        assert all(r.levelno == logging.DEBUG for r in said)
        # What llama.cpp says about a later failure is a warning again.
        caplog.clear()
        held = [qwen.start(PROMPT * 2), qwen.start(PROMPT * 2)]
        with pytest.raises(ContextFullError):
            qwen.start(PROMPT * 2)
        assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "llama.cpp")
    for seq in held:
        qwen.release(seq)


def test_a_reward_prompt_stops_inside_its_prefill(roomy_tiny_qwen: Path, open_model) -> None:
    model = open_model(roomy_tiny_qwen, n_seq_max=8)
    reward = JudgeReward(model)
    queries = [RewardQuery("What is 3 + 4?", ("Three plus four.",), c) for c in ("It is 7.", "It is 8.")]
    stop = StopInDecode(reward.usage)  # the reward charges its own record for its model's rows
    with pytest.raises(Cancelled):
        reward.score(queries, should_stop=stop)
    assert stop.asked == 3
    assert reward.usage.decoded_rows == 0  # the prompt's decode did not finish
    assert model.live_sequences == 0
    assert_consistent(model)
    fresh = JudgeReward(open_model(roomy_tiny_qwen, n_seq_max=8))
    assert reward.score(queries) == fresh.score(queries)


@pytest.fixture(scope="module")
def roomy_tiny_qwen(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_writer) -> Path:
    """The tiny qwen with a 2048-token context: a judge's prompt is long in byte-level tokens."""
    shape = tiny_gguf_writer.Shape(context_length=2048)
    return tiny_gguf_writer.write_qwen_like(tmp_path_factory.mktemp("roomy") / "roomy-qwen.gguf", shape=shape, seed=7)


@pytest.fixture(scope="module")
def real_small(dev_model_small: Path):
    with LlamaModel(dev_model_small, n_ctx=2048, n_seq_max=2) as model:
        if model.gpu_layers:
            pytest.skip("a GPU decode runs to its end; only the CPU backend stops inside one")
        yield model


def long_prompt(model: LlamaModel) -> list[int]:
    """1500 tokens: three decodes of 512 rows, seconds each on a CPU."""
    question = "List the first forty prime numbers, one per line. " * 60
    return model.prompt_tokens(model.format_chat(SYSTEM_PROMPT, question))[:1500]


def after(seconds: float, action: Callable[[], None]) -> list[float]:
    """Runs `action` on a timer thread; the list gets the time it ran."""
    done: list[float] = []

    def run() -> None:
        done.append(time.monotonic())
        action()

    threading.Timer(seconds, run).start()
    return done


@pytest.mark.real
def test_a_long_prefill_of_a_real_model_stops_within_a_second(real_small: LlamaModel) -> None:
    prompt, stop = long_prompt(real_small), threading.Event()
    set_at = after(0.3, stop.set)
    with pytest.raises(Cancelled):
        real_small.start(prompt, should_stop=stop.is_set)
    assert time.monotonic() - set_at[0] < 1.0
    assert real_small.usage.prefilled < len(prompt)  # stopped in the first or second of three decodes
    assert real_small.live_sequences == 0


@pytest.mark.real
def test_ctrl_c_in_a_long_prefill_of_a_real_model_reaches_the_program_within_a_second(real_small: LlamaModel) -> None:
    # Ctrl-C from outside, while the main thread is inside llama.cpp: Python
    # runs the handler on entering the abort callback.
    def handler(signum: int, frame: object) -> None:
        raise Pressed()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        prompt = long_prompt(real_small)
        sent_at = after(0.3, lambda: signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT))
        with pytest.raises(Pressed):
            real_small.start(prompt, should_stop=threading.Event().is_set)
        assert time.monotonic() - sent_at[0] < 1.0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert real_small.live_sequences == 0
