"""Measure what OMP_WAIT_POLICY costs: solve time and CPU burnt while idle.

    python scripts/omp_wait_policy.py --reps 5 --out /tmp/omp.jsonl

ggml's CPU backend runs each graph in an OpenMP parallel region. Between
regions GNU OpenMP's workers spin before they sleep: a while by default,
for ever under OMP_WAIT_POLICY=active, not at all under passive. Spinning
saves a wake-up per region but burns a core while the app waits for its next
question, and on a shared machine it takes CPU from the thread doing work.

Each repetition runs one child process per policy (unset, passive, active),
in a rotating order so that the machine's load falls on each alike. A child
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

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("unset", "passive", "active")
QUESTION = "What is 12 + 30?"
MODEL = "qwen2.5-coder-0.5b-instruct"


def child(policy: str) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from app.config import Preset, RewardSpec, load_catalog
    from app.presets import resolve_preset
    from app.runtime import open_engines
    from app.search import run
    from app.search.settings import SearchSettings

    preset = Preset(name="omp", draft=MODEL, target=MODEL, reward=RewardSpec(kind="judge", model=MODEL))
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


def parent(reps: int, out: Path) -> None:
    rows = []
    for rep in range(reps):
        shift = rep % len(POLICIES)
        for policy in POLICIES[shift:] + POLICIES[:shift]:
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy != "unset":
                env["OMP_WAIT_POLICY"] = policy.upper()
            done = subprocess.run(
                [sys.executable, __file__, "--child", policy], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                print(f"{policy}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["rep"] = rep
            rows.append(row)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"rep {rep} {policy:<8} solve {row['solve_s']:6.2f} s  idle cpu {row['idle_cpu_per_s']:.2f}"
                f"  load {row['loadavg']:.1f}",
                flush=True,
            )
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
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
    else:
        parent(args.reps, args.out)


if __name__ == "__main__":
    main()
