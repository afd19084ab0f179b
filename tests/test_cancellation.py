"""Ctrl-C (SIGINT to a real process) during a model load, a download and a benchmark:
each stops within about a second, exits 130 without a traceback and keeps what it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.cli import main
from app.config import dump_toml, models_dir

if TYPE_CHECKING:
    from fakehub import FakeHub

ROOT = Path(__file__).resolve().parents[1]
# One second is the target. The bound leaves room for a busy machine, and for a
# model load's first phase (the vocabulary), where llama.cpp offers no callback
# to stop at: about a second on a loaded 2-core machine.
STOPS_WITHIN = 2.5


# The child starts as a command typed at a terminal does, with Ctrl-C's default
# handler. A process started in the background (`cmd &` in a script, as CI
# runners may start the suite) inherits SIGINT ignored, and a Python started
# that way keeps ignoring it: the interrupt would never arrive.
AS_IN_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " runpy.run_module('app.cli', run_name='__main__', alter_sys=True)"
)


def start(args: list[str], **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the process never got there"
        time.sleep(0.02)


def sums(path: Path, count: int) -> Path:
    """A dataset of `count` one-line sums, more than a test waits for."""
    path.write_text(
        "".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(count))
    )
    return path


def interrupt(process: subprocess.Popen[str]) -> tuple[float, str, str]:
    """SIGINT, then the seconds until the process was gone, and its output."""
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return time.monotonic() - sent, out, err


def test_ctrl_c_during_a_download_keeps_the_bytes_and_the_rerun_resumes(
    fake_hub: FakeHub, hub_env: Path, tiny_gguf: Callable[..., bytes], capsys
) -> None:
    # Past two of huggingface_hub's 10 MB chunks (the process writes whole chunks), sent slowly
    # enough (about 20 s) that the interrupt always comes before the end.
    model = tiny_gguf("qwen", seed=1) + bytes(24 * 2**20)
    fake_hub.add_repo("test-org/tiny-GGUF", {"tiny-Q8_0.gguf": model})
    fake_hub.seconds_per_piece = 0.05
    (hub_env / "user-models.toml").write_text(
        dump_toml({"models": {"tiny": {"repo": "test-org/tiny-GGUF", "file": "tiny-Q8_0.gguf", "size": len(model)}}})
    )
    process = start(["download", "tiny"])
    blobs = hub_env / "hf" / "hub" / "models--test-org--tiny-GGUF" / "blobs"
    wait_for(lambda: any(p.stat().st_size > 0 for p in blobs.glob("*.incomplete")), process)
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOPS_WITHIN, f"stopped after {seconds:.2f} s"
    assert "Traceback" not in err and "run the same command again to resume" in err
    [partial] = blobs.glob("*.incomplete")
    kept = partial.read_bytes()
    assert kept and model.startswith(kept)

    fake_hub.seconds_per_piece = 0.0
    assert main(["download", "tiny"]) == 0  # the next command in the same terminal works and resumes
    assert fake_hub.content_requests()[-1].range == f"bytes={len(kept)}-"
    assert next(blobs.glob("*")).read_bytes() == model


def test_ctrl_c_during_a_benchmark_keeps_the_finished_runs(tmp_path: Path, tiny_qwen: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        dump_toml(
            {
                "models": {"tiny": {"path": str(tiny_qwen), "file": tiny_qwen.name, "context": 512}},
                "presets": {
                    "tiny": {
                        "target": "tiny",
                        "reward": {"kind": "judge", "model": "tiny"},
                        "search": {"max_steps": 6, "max_step_tokens": 16},
                    }
                },
            }
        )
    )
    dataset = sums(tmp_path / "problems.jsonl", 200)
    out = tmp_path / "out"
    args = ["bench", "--dataset", str(dataset), "--methods", "greedy,beam", "--preset", "tiny", "--out", str(out)]
    process = start([*args, "--no-progress", "--n", "2"], SPECS_LOCAL_CONFIG=str(catalog), SPECS_LOCAL_THREADS="1")
    results = out / "results.jsonl"
    wait_for(lambda: results.is_file() and results.read_text().count("\n") >= 2, process)
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOPS_WITHIN, f"stopped after {seconds:.2f} s"
    assert "Traceback" not in err
    assert "runs left; the finished ones are kept in" in err and "the same command resumes from there" in err
    lines = results.read_text().splitlines()
    assert len(lines) >= 2 and all(json.loads(line)["error"] is None for line in lines)


def test_ctrl_c_during_train_head_keeps_the_finished_rollouts(tmp_path: Path, tiny_qwen: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        dump_toml(
            {
                "models": {
                    "tiny-draft": {"path": str(tiny_qwen), "file": tiny_qwen.name, "context": 512},
                    "tiny-target": {"path": str(tiny_qwen), "file": tiny_qwen.name, "context": 512},
                },
                "presets": {
                    "tiny": {
                        "draft": "tiny-draft",
                        "target": "tiny-target",
                        "reward": {"kind": "judge", "model": "tiny-target"},
                        "search": {"max_steps": 4, "max_step_tokens": 12},
                    }
                },
            }
        )
    )
    dataset = sums(tmp_path / "problems.jsonl", 300)
    out = tmp_path / "head.safetensors"
    args = ["train-head", "--preset", "tiny", "--dataset", str(dataset), "--out", str(out), "--no-judge"]
    process = start(args, SPECS_LOCAL_CONFIG=str(catalog), SPECS_LOCAL_THREADS="1")
    rollouts = tmp_path / "head.safetensors.work" / "rollouts.jsonl"
    wait_for(lambda: rollouts.is_file() and rollouts.read_text().count("\n") >= 2, process)
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOPS_WITHIN, f"stopped after {seconds:.2f} s"
    assert "Traceback" not in err and "rollouts are kept in" in err and "run the same command to go on" in err
    assert rollouts.read_bytes().endswith(b"\n") and not out.exists()


@pytest.mark.real
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches the load through /proc")
def test_ctrl_c_during_a_model_load_stops_the_load(dev_model_large: Path, tmp_path: Path) -> None:
    process = start(
        ["solve", "What is 12 + 30?", "--preset", "cpu-dev"],
        SPECS_LOCAL_CONFIG=str(tmp_path / "none.toml"),
        SPECS_LOCAL_MODELS_DIR=str(models_dir()),
    )

    def loading() -> bool:  # llama.cpp holds the file open while it loads it
        try:
            return any(os.readlink(fd) == str(dev_model_large) for fd in Path(f"/proc/{process.pid}/fd").iterdir())
        except OSError:  # a descriptor closed while we looked
            return False

    wait_for(loading, process)
    time.sleep(0.3)  # past the Python checks of the file, into llama.cpp's load of it
    seconds, _, err = interrupt(process)
    assert process.returncode == 130, err
    assert seconds < STOPS_WITHIN, f"stopped after {seconds:.2f} s"
    assert "Traceback" not in err
    assert err.rstrip().endswith("Aborted.")  # click's word for a Ctrl-C outside a search
