"""The headless layers never load llama_cpp or textual (checked in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLESS = [
    "engines.base",
    "engines.rows",
    "engines.sampling",
    "engines.testing.scripted",
    "app.search",
    *sorted(f"app.search.{p.stem}" for p in (ROOT / "app" / "search").glob("*.py") if p.stem != "__init__"),
    *sorted(f"app.eval.{p.stem}" for p in (ROOT / "app" / "eval").glob("*.py") if p.stem != "__init__"),
]


def test_search_and_scripted_engines_import_neither_llama_cpp_nor_textual() -> None:
    assert "app.search.specs" in HEADLESS and "app.search.steps" in HEADLESS
    code = (
        "import importlib, sys\n"
        f"for name in {HEADLESS!r}: importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'textual'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_a_search_runs_without_llama_cpp_or_textual() -> None:
    code = (
        "import sys\n"
        "from app.search import run\n"
        "from app.search.settings import SearchSettings\n"
        "from engines.testing.scripted import ARITHMETIC_QUESTION, scripted_engines\n"
        "e = scripted_engines()\n"
        "f = run('specs', ARITHMETIC_QUESTION, e, SearchSettings(), clock=e.clock)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'textual'))\n"
        "print(f.answer, ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42"]


def test_the_command_line_makes_openmp_spin_briefly_unless_told_otherwise() -> None:
    code = (
        "import ctypes, sys\n"
        "import app.cli\n"
        "assert 'llama_cpp' not in sys.modules  # libgomp is not loaded yet, so it will read the values\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.getenv.restype = ctypes.c_char_p\n"
        "print(*(libc.getenv(name) for name in (b'OMP_WAIT_POLICY', b'GOMP_SPINCOUNT')))\n"
    )
    cases = (
        ({}, "None b'10000'"),
        ({"OMP_WAIT_POLICY": "passive"}, "b'passive' None"),  # the user's choice wins
        ({"GOMP_SPINCOUNT": "300000"}, "None b'300000'"),
    )
    for given, seen in cases:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env={**env, **given}, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == seen
