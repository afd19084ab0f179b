"""Measure `specs-local serve` against its targets.

    python scripts/bench_serve.py dev    # the cpu-dev preset (development models)
    python scripts/bench_serve.py tiny   # tiny random-weight GGUFs, written to a temporary folder

`dev` runs one search through `solve --json` in a fresh process and the same
search (same seed, checked to take the same steps) as a non-streamed request
to a server in this process, and reports the request's latency minus the
search's wall time in `solve` (the overhead target), together with the
search's own wall time inside the server, which separates what the server adds
(HTTP, JSON, the queue hand-off) from run-to-run noise on a shared machine.

`tiny` sends sequential non-streamed requests (50 by default) to one server and
reports its resident memory after the first and after the last, the models'
live sequence ids after each (0 when nothing leaked), and what each request
took beyond its search (the server's own time per request).

Both then open streams, close each once the first step has arrived, and time
from the close until /health says no search runs (polled every 5 ms).

The last line of output is one JSON object with these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai
import uvicorn
from starlette.applications import Starlette

from app.commands.common import Consent, RuntimeOptions
from app.commands.serve import served_methods, serving
from app.config import load_catalog
from app.presets import resolve_preset
from app.search.settings import SearchSettings
from app.search.types import Engines

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is 12 + 30?"


@contextmanager
def server_in_thread(app: Starlette) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


@contextmanager
def served(preset: str, threads: int) -> Iterator[tuple[str, Engines]]:
    chosen = resolve_preset(load_catalog(), preset)
    settings = SearchSettings(**chosen.preset.search)
    with (
        serving(
            chosen,
            settings,
            served_methods(chosen, None),
            runtime=RuntimeOptions(threads=threads),
            consent=Consent(),
            queue_size=4,
            api_key=None,
        ) as app,
        server_in_thread(app) as url,
    ):
        yield url, app.state.worker.engines


def searching(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return bool(json.load(response)["searching"])


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def live_sequences(engines: Engines) -> int:
    models = {id(m): m for m in (engines.target, engines.draft) if m is not None}
    return sum(getattr(m, "live_sequences", 0) for m in models.values())


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=1800)


def stop_times(url: str, model: str, tries: int, extra: dict[str, Any]) -> list[float]:
    """Seconds from closing a stream (after its first step) to its search stopping."""
    times = []
    for _ in range(tries):
        stream = client(url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], stream=True, extra_body=extra
        )
        chunks = iter(stream)
        while not getattr(next(chunks).choices[0].delta, "reasoning_content", None):
            pass
        t0 = time.monotonic()
        stream.close()
        while searching(url):
            time.sleep(0.005)
        times.append(time.monotonic() - t0)
    return times


def dev(args: argparse.Namespace) -> dict[str, Any]:
    options = [
        "--seed",
        str(args.seed),
        "--max-steps",
        str(args.max_steps),
        "--max-step-tokens",
        str(args.max_step_tokens),
    ]
    command = [sys.executable, "-m", "app.cli", "solve", QUESTION, "--preset", args.preset, "--json"]
    command += [*options, "--threads", str(args.threads)]
    print("solve:", " ".join(command[3:]), flush=True)
    solved = json.loads(subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    print(f"  search wall time {solved['stats']['wall_seconds']:.2f} s, answer {solved['answer']}", flush=True)
    model = f"specs-local/{args.preset}/specs"
    with served(args.preset, args.threads) as (url, _engines):
        t0 = time.monotonic()
        reply = client(url).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTION}],
            seed=args.seed,
            extra_body={"max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens},
        )
        latency = time.monotonic() - t0
        specs = reply.model_dump()["specs"]
        same = specs["steps"] == solved["steps"]
        inside = specs["stats"]["wall_seconds"]
        print(f"request: latency {latency:.2f} s, search inside the server {inside:.2f} s, same steps: {same}")
        stops = stop_times(url, model, args.tries, {"seed": args.seed + 1, "max_step_tokens": args.max_step_tokens})
    overhead = latency - solved["stats"]["wall_seconds"]
    return {
        "preset": args.preset,
        "same_trajectory": same,
        "solve_search_seconds": solved["stats"]["wall_seconds"],
        "request_seconds": latency,
        "server_search_seconds": inside,
        "overhead_seconds": overhead,
        "overhead_percent": 100 * overhead / solved["stats"]["wall_seconds"],
        "server_only_seconds": latency - inside,
        "server_only_percent": 100 * (latency - inside) / inside,
        "stop_seconds": stops,
    }


def tiny(args: argparse.Namespace) -> dict[str, Any]:
    import tiny_gguf  # beside this file

    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_gguf.write_qwen_like(
            Path(tmp) / "tiny-qwen.gguf",
            seed=7,
            weight_scale=0.1,
            output_bias={"\n\n": 1.5, ".\n\n": 1.5, "<|im_end|>": 1.0},
        )
        catalog = Path(tmp) / "models.toml"
        catalog.write_text(
            f'[models.tiny]\npath = "{path}"\nfile = "{path.name}"\ncontext = 1024\n'
            '[presets.tiny]\ndraft = "tiny"\ntarget = "tiny"\nreward = { kind = "judge", model = "tiny" }\n'
            "search = { max_steps = 8, max_step_tokens = 24 }\n",
            encoding="utf-8",
        )
        os.environ["SPECS_LOCAL_CONFIG"] = str(catalog)
        with served("tiny", 1) as (url, engines):
            chat = client(url).chat.completions
            rss: list[float] = []
            live: list[int] = []
            before = resident_mb()
            extra: list[float] = []  # request latency minus the search's wall time inside the server
            for i in range(args.requests):
                t0 = time.monotonic()
                reply = chat.create(
                    model="specs-local/tiny/specs", messages=[{"role": "user", "content": QUESTION}], seed=i
                )
                extra.append(time.monotonic() - t0 - reply.model_dump()["specs"]["stats"]["wall_seconds"])
                rss.append(resident_mb())
                live.append(live_sequences(engines))
            stops = stop_times(url, "specs-local/tiny/specs", args.tries, {"max_steps": 200, "max_step_tokens": 64})
            after_stops = live_sequences(engines)
    print(
        f"resident memory: before {before:.1f} MB, after 1 request {rss[0]:.1f} MB, after {len(rss)} {rss[-1]:.1f} MB"
    )
    print(f"live sequences after each request: max {max(live)}, after the closed streams {after_stops}")
    print(f"server time per request (latency minus search): median {statistics.median(extra) * 1000:.1f} ms")
    return {
        "requests": args.requests,
        "rss_before_mb": before,
        "rss_after_first_mb": rss[0],
        "rss_after_last_mb": rss[-1],
        "rss_growth_mb": rss[-1] - rss[0],
        "live_sequences_max": max(live),
        "live_sequences_after_closed_streams": after_stops,
        "server_only_ms_median": statistics.median(extra) * 1000,
        "server_only_ms_max": max(extra) * 1000,
        "stop_seconds": stops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("dev", help="overhead against solve, and stop time, on a real preset")
    d.add_argument("--preset", default="cpu-dev")
    d.add_argument("--seed", type=int, default=0)
    # Short steps keep this to a few minutes on a shared 2-core machine.
    d.add_argument("--max-steps", type=int, default=3)
    d.add_argument("--max-step-tokens", type=int, default=64)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--tries", type=int, default=2, help="streams closed for the stop time")
    t = sub.add_parser("tiny", help="memory and live sequences over many requests, and stop time, on tiny GGUFs")
    t.add_argument("--requests", type=int, default=50)
    t.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    result = dev(args) if args.mode == "dev" else tiny(args)
    print(f"stream closed -> search stopped: {', '.join(f'{s * 1000:.0f} ms' for s in result['stop_seconds'])}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
