"""Fuzzing the parsers of files users hand us: every input is read or refused in one sentence.

A user catalog (models.toml), a dataset in JSON Lines, a trace and a GGUF header are
each given valid files mutated at random (bytes flipped, cut, repeated,
inserted, integers swapped for extreme ones) and text built from their own
grammar. The only outcomes allowed are a result or the parser's one-sentence
error; anything else (a RecursionError, a UnicodeDecodeError, an
OverflowError) is a crash the user would see as a traceback.

The default run tries a few hundred inputs per parser; HYPOTHESIS_PROFILE=long
tries thousands (what the reliability note reports).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from fakehub import build_tiny_gguf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.commands.replay import load_events
from app.config import ConfigError, dump_toml, load_catalog
from app.errors import UserError
from app.eval.datasets import read_jsonl
from engines.base import ModelLoadError
from engines.gguf_info import read_header

settings.register_profile("default", max_examples=150, deadline=None)
settings.register_profile("long", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
FILES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

EXTREMES = [0, 1, 2, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few random edits."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "cut", "delete", "insert", "repeat", "integer"]))
        if edit == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "cut":
            del data[at:]
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
        else:
            data[at : at + 8] = struct.pack("<Q", draw(st.sampled_from(EXTREMES)))
        if not data:
            break
    return bytes(data)


def assert_one_sentence(message: str) -> None:
    assert message and "\n" not in message, repr(message)
    assert "Traceback" not in message


# -- models.toml overrides ------------------------------------------------------------

USER_CATALOG = dump_toml(
    {
        "default_preset": "mine",
        "models": {
            "mine-draft": {"repo": "org/draft-GGUF", "file": "d-Q4_K_M.gguf", "sha256": "a" * 64, "size": 1000},
            "mine-target": {"path": "/models/t.gguf", "file": "t.gguf", "context": 2048},
        },
        "presets": {
            "mine": {
                "draft": "mine-draft",
                "target": "mine-target",
                "reward": {"kind": "judge", "model": "mine-target"},
                "search": {"n": 4, "beta": 10.0, "max_steps": 8},
            }
        },
    }
).encode()

TOML_KEYS = st.sampled_from(
    ["default_preset", "models", "presets", "repo", "file", "path", "sha256", "size", "context", "local", "revision"]
    + ["draft", "target", "reward", "kind", "model", "method", "search", "n", "beta", "tau_accept", "cpu-dev", "x"]
)
TOML_VALUES = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TOML_KEYS, inner, max_size=4)),
    max_leaves=20,
)


def _toml_text(data: object) -> str | None:
    try:
        return dump_toml(data)
    except (TypeError, AttributeError):  # a shape the small writer does not write
        return None


def check_catalog(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        load_catalog(path)
    except ConfigError as exc:
        assert_one_sentence(str(exc))


@FILES
@given(content=mutated(USER_CATALOG))
def test_mutated_user_catalogs_load_or_are_refused_in_one_sentence(tmp_path: Path, content: bytes) -> None:
    check_catalog(tmp_path / "models.toml", content)


@FILES
@given(data=st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=5))
def test_user_catalogs_of_any_shape_load_or_are_refused_in_one_sentence(tmp_path: Path, data: dict) -> None:
    text = _toml_text(data)
    assume(text is not None)  # a shape the writer cannot write is not an input
    assert text is not None
    check_catalog(tmp_path / "models.toml", text.encode())


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not utf-8 = 1\n",
        b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        b"[models.x]\nfile = 'a.gguf'\nrepo = 'o/r'\ncontext = 99999999999999999999\n",
        b'default_preset = "' + b"x" * 100_000 + b'"\n',
        b'[models."two\\nlines"]\nfile = "a.gguf"\nrepo = "o/r"\nbogus = 1\n',
    ],
    ids=["not-utf8", "deep-nesting", "huge-integer", "long-string", "newline-in-a-key"],
)
def test_catalogs_found_by_fuzzing(tmp_path: Path, content: bytes) -> None:
    check_catalog(tmp_path / "models.toml", content)


# -- dataset JSON Lines -------------------------------------------------------------------

DATASET = "".join(
    json.dumps(row) + "\n"
    for row in [
        {"id": "a", "problem": "What is 12 + 30?", "answer": "42"},
        {"question": "Natalia sold 48 clips ... altogether?", "answer": "She sold 48 + 24 = 72.\n#### 72"},
        {"problem": "Find x.", "final_answer": ["$3$", "$-3$"], "unique_id": "b"},
        {"Problem": "2^10?", "Answer": 1024, "ID": 7},
    ]
).encode()
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["id", "problem", "question", "answer", "final_answer", "Answer", "unique_id", "x"]),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=15,
)


def check_dataset(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        dataset = read_jsonl(path, name=path.name)
    except UserError as exc:
        assert_one_sentence(str(exc))
    else:
        assert dataset.problems
        for note in dataset.skipped:
            assert_one_sentence(note)


@FILES
@given(content=mutated(DATASET))
def test_mutated_datasets_read_or_are_refused_in_one_sentence(tmp_path: Path, content: bytes) -> None:
    check_dataset(tmp_path / "problems.jsonl", content)


@FILES
@given(rows=st.lists(JSON_VALUES, min_size=1, max_size=6))
def test_datasets_of_any_json_read_or_are_refused_in_one_sentence(tmp_path: Path, rows: list) -> None:
    check_dataset(tmp_path / "problems.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"\n",
        b'{"problem": "a", "answer": ' + b"[" * 100_000 + b"}\n",
        b'{"problem": "x", "answer": "1"}\n' + b"\xff\xfe\n",
        b'{"problem": "x", "answer": 1e999}\n',
    ],
    ids=["deep-array", "deep-answer", "not-utf8", "infinite-answer"],
)
def test_datasets_found_by_fuzzing(tmp_path: Path, content: bytes) -> None:
    check_dataset(tmp_path / "problems.jsonl", content)


# -- GGUF headers ---------------------------------------------------------------------------


def tiny_header() -> bytes:
    """The header of a tiny model (metadata and tensor infos), where the parser reads."""
    data = build_tiny_gguf("qwen", seed=1)
    return data[: data.index(b"token_embd.weight") + 200]


def check_header(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        read_header(path)
    except ModelLoadError as exc:
        assert_one_sentence(str(exc))


@FILES
@given(content=mutated(tiny_header()))
def test_mutated_gguf_headers_parse_or_are_refused_in_one_sentence(tmp_path: Path, content: bytes) -> None:
    check_header(tmp_path / "m.gguf", content)


@pytest.mark.parametrize(
    "content",
    [
        b"GGUF",
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63 - 1),  # a key longer than any file
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**62),
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**62),
        b"GGUF" + struct.pack("<IQQ", 3, 0, 2**64 - 1),
    ],
    ids=["magic-only", "huge-key", "huge-string-array", "huge-number-array", "huge-count"],
)
def test_gguf_headers_found_by_fuzzing(tmp_path: Path, content: bytes) -> None:
    check_header(tmp_path / "m.gguf", content)


# -- traces ---------------------------------------------------------------------------------

# One trace written before the method registry (read through the upgrade) and the same search's head as
# today's writer puts it, so that both readers of lines are fuzzed.
OLD_TRACE = (Path(__file__).parent / "data" / "trace-specs-v0.jsonl").read_bytes()


def check_trace(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        loaded = load_events(path)
    except UserError as exc:
        assert_one_sentence(str(exc))
    else:
        assert loaded.events


@FILES
@given(content=mutated(OLD_TRACE))
def test_mutated_traces_replay_or_are_refused_in_one_sentence(tmp_path: Path, content: bytes) -> None:
    check_trace(tmp_path / "t.jsonl", content)


@FILES
@given(rows=st.lists(JSON_VALUES, min_size=1, max_size=6))
def test_traces_of_any_json_replay_or_are_refused_in_one_sentence(tmp_path: Path, rows: list) -> None:
    check_trace(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"\n",
        b'{"event": "SearchStarted", "t": ' + b"[" * 100_000 + b"}\n",
        b"\xff\xfe\n",
    ],
    ids=["deep-array", "deep-field", "not-utf8"],
)
def test_traces_found_by_fuzzing(tmp_path: Path, content: bytes) -> None:
    check_trace(tmp_path / "t.jsonl", content)
