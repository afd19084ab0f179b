"""Compare a model served by vLLM with the same model in process (a GGUF here).

    python scripts/remote_check.py --gguf ~/.cache/specs-dev-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
        --url http://127.0.0.1:8011/v1 --served qwen-0.5b

Prints, as JSON:
- teacher forcing: the largest and mean absolute difference of per-token
  log-probabilities of one solution text, served against in process;
- for each method: whether the same search (draft, target and judge all on
  that one model, greedy sampling, same seed) accepts the same steps served
  and in process, and the served run's client overhead: wall time minus the
  time spent waiting for the server, per step and as a share of a step.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.search import run
from app.search.events import StepAccepted
from app.search.settings import SearchSettings
from app.search.types import Engines
from engines.llama import LlamaModel
from engines.remote.client import ServerPool
from engines.remote.model import RemoteModel
from engines.reward import JudgeReward

QUESTION = "What is 12 + 30?"
SOLUTION = (
    "To find the sum of 12 and 30, we add the tens and the ones separately.\n\n"
    "12 + 30 = 42.\n\nSo the answer is $\\boxed{42}$."
)


def engines(open_model: Callable[[], LlamaModel | RemoteModel]) -> Engines:
    """As app.runtime opens a preset whose three roles name one model: the
    target (judging too) and a draft of its own, each with its own accounts."""
    target = open_model()
    # The text rewards read either engine (tokenize, chat template, next-token logprobs).
    return Engines(target=target, draft=open_model(), reward=JudgeReward(target))  # type: ignore[arg-type]


def solve(open_model: Callable[[], LlamaModel | RemoteModel], method: str, settings: SearchSettings) -> dict[str, Any]:
    events: list[object] = []
    t0 = time.perf_counter()
    finished = run(method, QUESTION, engines(open_model), settings, emit=events.append)
    wall = time.perf_counter() - t0
    waited = sum(m.native_seconds for m in finished.stats.models.values())
    steps = max(1, finished.stats.steps)
    return {
        "steps": [e.text for e in events if isinstance(e, StepAccepted)],
        "answer": finished.answer,
        "error": finished.error,
        "wall_s": round(wall, 3),
        "overhead_s_per_step": round((finished.stats.wall_seconds - waited) / steps, 4),
        "overhead_share": round((finished.stats.wall_seconds - waited) / finished.stats.wall_seconds, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", required=True, type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--served", required=True)
    parser.add_argument("--methods", default="greedy,specs")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    def open_local() -> LlamaModel:
        return LlamaModel(args.gguf, n_threads=args.threads, n_seq_max=64, flash_attn="off")

    def open_served() -> RemoteModel:
        return RemoteModel(ServerPool([args.url]), args.served)

    local, served = open_local(), open_served()
    report: dict[str, dict[str, Any]] = {}

    prompt = local.format_chat("Please reason step by step, and put your final answer within \\boxed{}.", QUESTION)
    tokens = local.tokenize(SOLUTION)
    [mine] = served.score([(served.start(prompt), tokens)])
    [theirs] = local.score([(local.start(prompt), tokens)])
    diff = np.abs(np.array(mine.logprobs) - np.array(theirs.logprobs))
    report["teacher_forcing"] = {
        "tokens": len(tokens),
        "max_abs_diff": round(float(diff.max()), 5),
        "mean_abs_diff": round(float(diff.mean()), 5),
    }

    settings = SearchSettings.model_validate(
        {"temperature": 0.0, "max_steps": args.max_steps, "max_step_tokens": 96, "n": 2, "seed": 1}
    )
    for method in args.methods.split(","):
        there, here = solve(open_served, method, settings), solve(open_local, method, settings)
        report[method] = {
            "same_steps": there["steps"] == here["steps"],
            "steps": len(here["steps"]),
            "answers": [there["answer"], here["answer"]],
            "error": there["error"],
            "served": {k: there[k] for k in ("wall_s", "overhead_s_per_step", "overhead_share")},
            "local_wall_s": here["wall_s"],
        }
        if not report[method]["same_steps"]:
            report[method]["steps_served"] = there["steps"]
            report[method]["steps_local"] = here["steps"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
