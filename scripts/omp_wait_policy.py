"""Measure what OMP_WAIT_POLICY costs: solve time and CPU burnt while idle.

    python scripts/omp_wait_policy.py --reps 5 --out /tmp/omp.jsonl
    python scripts/omp_wait_policy.py --reps 3 --busy 2 --out /tmp/omp-busy.jsonl


ggml's CPU backend runs each graph in an OpenMP parallel region. Between
regions GNU OpenMP's workers spin before they sleep: a while by default,
for ever under OMP_WAIT_POLICY=active, not at all under passive. Spinning
saves a wake-up per region but burns a core while the app waits for its next
question, and on a shared machine it takes CPU from the thread doing work.

Each repetition runs one child process per policy (unset; passive; active;
short-spin: unset with GOMP_SPINCOUNT=10000, a spin of a few microseconds
that bridges the gaps inside a decode but not the wait for the next one), in
a rotating order so that the machine's load falls on each alike. `--busy K`
keeps K other processes busy on the CPU meanwhile (a machine shared with
other work); a child that takes longer than `--timeout` counts as that long. A child
opens the development 0.5B model as draft, target and judge, solves a short
question twice with greedy search, then sleeps a second and
counts the CPU seconds the process used while asleep. Each child prints one
JSON line; the parent appends them to --out and prints medians at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("unset", "passive", "active", "short-spin")
SHORT_SPIN = "10000"
QUESTION = "What is 12 + 30?"
MODEL = "qwen2.5-coder-0.5b-instruct"


def child(policy: str, model: str = MODEL) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from app.config import Preset, RewardSpec, load_catalog
    from app.presets import resolve_preset
    from app.runtime import open_engines
    from app.search import run
    from app.search.settings import SearchSettings

    preset = Preset(name="omp", draft=model, target=model, reward=RewardSpec(kind="judge", model=model))
    resolved = resolve_preset(load_catalog(), preset)
    settings = SearchSettings.model_validate({"max_steps": 2, "max_step_tokens": 16, "seed": 1})
    start = time.monotonic()
    with open_engines(resolved, settings) as engines:
        loaded = time.monotonic()
        solves = []
        for _ in range(2):
            t0 = time.monotonic()
            run("greedy", QUESTION, engines, settings)
            solves.append(time.monotonic() - t0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(1.0)  # the app waiting for the next question
        idle_cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    return {
        "policy": policy,
        "load_s": loaded - start,
        "solve_s": sum(solves),
        "solves": solves,
        "idle_cpu_per_s": idle_cpu,
        "loadavg": os.getloadavg()[0],
    }


def _busy() -> None:
    while True:
        pass


def environment(policy: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy == "short-spin":
        env["GOMP_SPINCOUNT"] = SHORT_SPIN
    elif policy != "unset":
        env["OMP_WAIT_POLICY"] = policy.upper()
    return env


def parent(reps: int, out: Path, busy: int, timeout: float, model: str) -> None:
    import multiprocessing

    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(busy)]
    for hog in hogs:
        hog.start()
    try:
        rows = _measure(reps, out, busy, timeout, model)
    finally:
        for hog in hogs:
            hog.terminate()
    _summarise(rows)


def _measure(reps: int, out: Path, busy: int, timeout: float, model: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rep in range(reps):
        shift = rep % len(POLICIES)
        for policy in POLICIES[shift:] + POLICIES[:shift]:
            try:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", policy, "--model", model],
                    env=environment(policy),
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                row = {"policy": policy, "solve_s": timeout, "idle_cpu_per_s": float("nan"), "timed_out": True}
                row.update(rep=rep, busy=busy, loadavg=os.getloadavg()[0])
                rows.append(row)
                with open(out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"rep {rep} {policy:<10} over {timeout:.0f} s", flush=True)
                continue
            if done.returncode != 0:
                print(f"{policy}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(rep=rep, busy=busy)
            rows.append(row)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"rep {rep} {policy:<10} solve {row['solve_s']:6.2f} s  idle cpu {row['idle_cpu_per_s']:.2f}"
                f"  load {row['loadavg']:.1f}",
                flush=True,
            )
    return rows


def _summarise(rows: list[dict[str, Any]]) -> None:
    summary = {}
    for policy in POLICIES:
        mine = [r for r in rows if r["policy"] == policy]
        if mine:
            summary[policy] = {
                "runs": len(mine),
                "solve_s_median": statistics.median(r["solve_s"] for r in mine),
                "solve_s_min": min(r["solve_s"] for r in mine),
                "solve_s_max": max(r["solve_s"] for r in mine),
                "idle_cpu_per_s_median": statistics.median(r["idle_cpu_per_s"] for r in mine),
            }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("omp_wait_policy.jsonl"))
    parser.add_argument("--busy", type=int, default=0, help="other processes kept busy meanwhile")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a child may take")
    parser.add_argument("--model", default=MODEL, help=f"catalog model to solve with (default {MODEL})")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model)))
    else:
        parent(args.reps, args.out, args.busy, args.timeout, args.model)


if __name__ == "__main__":
    main()
