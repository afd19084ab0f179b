"""Soak test: many solves in one process through the same engines, as the app and a server run them.

    python scripts/soak.py --solves 100 --out soak.jsonl              # tiny GGUFs
    python scripts/soak.py --solves 20 --real --out soak-real.jsonl   # the cpu-dev preset

The engines are opened once; solves then cycle through every method with a
new seed and question each time. After each solve one JSON line records the
resident memory, open file descriptors, OS threads and the sequence ids
still held by each model: as the search left them (the judge keeps its
cached prefixes until the next search starts) and after the reward model's
reset (then none may be left). The last line
is a summary: the growth of each after the warm-up solves, which should be
none for descriptors, threads and sequences and a few MB at most for memory.
It is not part of the test suite: it takes minutes, and its figures are
what the reliability note reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import app.cli  # noqa: F401  (the command line's process settings, OpenMP's wait policy among them)
from app.config import Catalog, load_catalog
from app.presets import ResolvedPreset, resolve_preset
from app.runtime import open_engines
from app.search import run
from app.search.settings import METHODS, SearchSettings

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = [
    "What is 12 + 30?",
    "Tom has 5 apples and buys 3 more. How many apples does he have?",
    "What is 7 times 8?",
    "A train travels 60 km in one hour. How far does it go in 3 hours?",
    "What is 100 minus 37?",
]
WARM_UP = 10
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def os_threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tiny_preset(folder: Path) -> ResolvedPreset:
    """Two tiny qwen-like GGUFs (one vocabulary): a draft, and a target that also judges."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import tiny_gguf

    bias = {"\n\n": 1.5, ".\n\n": 1.5, "<|im_end|>": 1.0}
    draft = tiny_gguf.write_qwen_like(folder / "draft.gguf", seed=3, weight_scale=0.1, output_bias=bias)
    target = tiny_gguf.write_qwen_like(folder / "target.gguf", seed=7, weight_scale=0.1, output_bias=bias)
    catalog = Catalog.model_validate(
        {
            "default_preset": "soak",
            "models": {
                "draft": {"path": str(draft), "file": draft.name, "context": 1024},
                "target": {"path": str(target), "file": target.name, "context": 1024},
            },
            "presets": {"soak": {"draft": "draft", "target": "target", "reward": {"kind": "judge", "model": "target"}}},
        }
    )
    return resolve_preset(catalog, "soak")


def live_sequences(engines: Any) -> dict[str, int]:
    models = {"target": engines.target, "draft": engines.draft, "reward": getattr(engines.reward, "model", None)}
    return {role: model.live_sequences for role, model in models.items() if hasattr(model, "live_sequences")}


def soak(preset: ResolvedPreset, settings: SearchSettings, solves: int, out: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    before = {"rss_mb": rss_mb(), "fds": open_fds(), "threads": os_threads()}
    with open(out, "a", encoding="utf-8") as log, open_engines(preset, settings) as engines:
        loaded = {"rss_mb": rss_mb(), "fds": open_fds(), "threads": os_threads()}
        for i in range(solves):
            method = METHODS[i % len(METHODS)]
            question = QUESTIONS[(i // len(METHODS)) % len(QUESTIONS)]
            start = time.monotonic()
            finished = run(method, question, engines, settings.model_copy(update={"seed": i}))
            row: dict[str, Any] = {
                "solve": i,
                "method": method,
                "seconds": round(time.monotonic() - start, 3),
                "steps": finished.stats.steps,
                "error": finished.error,
                "rss_mb": round(rss_mb(), 1),
                "fds": open_fds(),
                "threads": os_threads(),
                "live": live_sequences(engines),
            }
            engines.reward.reset()  # its cached prefixes are kept for the next step, not the next question
            row["live_after_reward_reset"] = live_sequences(engines)
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(
                f"{i:3d} {method:<10} {row['seconds']:7.2f} s  rss {row['rss_mb']:7.1f} MB  fds {row['fds']}"
                f"  threads {row['threads']}  live {row['live']} then {row['live_after_reward_reset']}",
                flush=True,
            )
    after = {"rss_mb": rss_mb(), "fds": open_fds(), "threads": os_threads()}
    warm = rows[min(WARM_UP, len(rows)) - 1]
    last = rows[-1]
    return {
        "solves": len(rows),
        "before_open": before,
        "after_open": loaded,
        "after_warm_up": {k: warm[k] for k in ("rss_mb", "fds", "threads")},
        "after_last_solve": {k: last[k] for k in ("rss_mb", "fds", "threads")},
        "after_close": after,
        "rss_growth_after_warm_up_mb": round(last["rss_mb"] - warm["rss_mb"], 1),
        "rss_max_mb": max(r["rss_mb"] for r in rows),
        "fd_growth_after_warm_up": last["fds"] - warm["fds"],
        "thread_growth_after_warm_up": last["threads"] - warm["threads"],
        "max_live_sequences_after_a_solve": max(max(r["live"].values(), default=0) for r in rows),
        "max_leaked_sequences": max(max(r["live_after_reward_reset"].values(), default=0) for r in rows),
        "errors": sum(1 for r in rows if r["error"]),
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solves", type=int, default=100)
    parser.add_argument("--real", action="store_true", help="Run the cpu-dev preset (the development models).")
    parser.add_argument("--out", type=Path, default=Path("soak.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            preset = resolve_preset(load_catalog(), "cpu-dev")
            settings = SearchSettings.model_validate({"n": 2, "max_steps": 3, "max_step_tokens": 24})
        else:
            preset = tiny_preset(Path(tmp))
            settings = SearchSettings.model_validate({"n": 2, "max_steps": 4, "max_step_tokens": 10})
        summary = soak(preset, settings, args.solves, args.out)
    line = json.dumps({"summary": summary, "real": args.real})
    with open(args.out, "a", encoding="utf-8") as log:
        log.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
