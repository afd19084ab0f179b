"""Benchmark engines/llama.py against a plain llama.cpp decode loop on one GGUF.

    python scripts/bench_engine.py --model ~/.cache/specs-dev-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

Measures, in one process on one model:
- batched step sampling (temperature 0.3, distinct prompts, so no histories
  merge) against a plain loop (prefill once, copy to B sequences, one
  llama_decode per token, argmax) at batch 1, 4 and 8, interleaved and
  repeated because the machine is shared; with `--sampling both` (the
  default), drawing tokens on the host (numpy) and in llama.cpp's graph side
  by side;
- teacher-forced scoring throughput (4 candidates after a shared prefix);
- decoded rows against distinct (history, token) rows over a scripted 10-step
  search (a draft samples 4 candidates, a target scores them, the best is
  kept): equal when nothing is decoded twice;
- the speed-up of shared-history decoding at temperature 0.2 and 0.8 (the
  same seeds with sharing on and off, which must give the same drafts);
- resident memory against the model file plus its KV cache;
- with `--layer N`, what reading layer N's output costs (a value head on a
  middle layer): the eval callback unarmed and armed, against no callback.

`--quick` stops after the teacher-forcing measurement. The last line of
output is one JSON object with these numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llama_cpp as L
import numpy as np

from engines.base import SYSTEM_PROMPT, SampleParams, Seq, StopReason
from engines.device_sampling import unavailable_reason
from engines.llama import LlamaModel, LlamaSeq

QUESTIONS = [
    "List the first forty prime numbers, one per line, with a short remark on each.",
    "Explain step by step how to multiply 3456 by 789 by hand.",
    "Write the multiplication table of 7 up to 7 x 30.",
    "Describe, step by step, how long division of 98765 by 43 works.",
    "Count from 1 to 60 in words, separated by commas.",
    "Explain the Euclidean algorithm on 1071 and 462, every step shown.",
    "List the squares of the numbers from 1 to 40 with a sentence about each.",
    "Walk through converting 1000 to binary, one division at a time.",
]
SEARCH_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
RSS_MARGIN_MB = 300
_quiet = False


def say(text: str) -> None:
    if not _quiet:
        print(text, flush=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plain_loop(model: LlamaModel, prompt: list[int], batch: int, n_tokens: int) -> float:
    """Tokens/s of the textbook batched greedy loop on the model's own context."""
    ctx, mem = model._native.ctx, model._native.memory
    seq_ids = list(range(model.n_seq_max - batch, model.n_seq_max))  # ids the engine leaves free here
    tokens = (L.llama_token * len(prompt))(*prompt)
    b = L.llama_batch_init(max(len(prompt), batch), 0, 1)
    try:
        for i, t in enumerate(prompt):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = t, i, 1, seq_ids[0], i == len(prompt) - 1
        b.n_tokens = len(prompt)
        assert L.llama_decode(ctx, b) == 0
        del tokens
        t0 = time.perf_counter()
        for s in seq_ids[1:]:
            L.llama_memory_seq_cp(mem, seq_ids[0], s, -1, -1)
        row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, len(prompt) - 1), shape=(model.n_vocab,))
        next_tokens = [int(row.argmax())] * batch
        pos = len(prompt)
        for _ in range(n_tokens):
            for i, s in enumerate(seq_ids):
                b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = next_tokens[i], pos, 1, s, True
            b.n_tokens = batch
            assert L.llama_decode(ctx, b) == 0
            next_tokens = [
                int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(model.n_vocab,)).argmax())
                for i in range(batch)
            ]
            pos += 1
        elapsed = time.perf_counter() - t0
    finally:
        for s in seq_ids:
            L.llama_memory_seq_rm(mem, s, -1, -1)
        L.llama_batch_free(b)
    return batch * n_tokens / elapsed


def engine_sampling(model: LlamaModel, prompts: list[LlamaSeq], n_tokens: int, seed: int) -> tuple[float, float]:
    """Tokens/s, and this process's CPU milliseconds per token (steady on a
    machine shared with other work, where wall time is not)."""
    params = SampleParams(temperature=0.3, max_tokens=n_tokens, seed=seed, delimiter=None)
    t0, c0 = time.perf_counter(), time.process_time()
    drafts = model.sample(prompts, 1, params)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    generated = sum(len(d.tokens) for ds in drafts for d in ds)
    for ds in drafts:
        for d in ds:
            model.release(d.seq)
    return generated / elapsed, cpu * 1000 / generated


def bench_batches(model: LlamaModel, n_tokens: int, rounds: int, paths: list[str]) -> dict[str, dict[str, float]]:
    """Engine against the plain loop per batch size; with several sampling paths
    ("host": numpy, "device": llama.cpp's graph), each path's rate and ratio
    too. `engine_tok_s` is the rate of the path the model chose by itself."""
    prompts = [model.start(model.format_chat(SYSTEM_PROMPT, q)) for q in QUESTIONS]
    plain_prompt = list(prompts[0].tokens)
    chosen = "device" if model.device_sampling else "host"
    for path in paths:  # warm-up: first decodes allocate buffers
        model.device_sampling = path == "device"
        engine_sampling(model, prompts[:8], 4, seed=0)
    plain_loop(model, plain_prompt, 8, 4)
    results = {}
    for batch in (1, 4, 8):
        engine: dict[str, list[float]] = {path: [] for path in paths}
        cpu: dict[str, list[float]] = {path: [] for path in paths}
        plain = []
        for r in range(rounds):  # interleaved: the machine's load drifts
            for path in paths:
                model.device_sampling = path == "device"
                rate, cost = engine_sampling(model, prompts[:batch], n_tokens, seed=r)
                engine[path].append(rate)
                cpu[path].append(cost)
            plain.append(plain_loop(model, plain_prompt, batch, n_tokens))
        p = statistics.median(plain)
        rates = {path: statistics.median(runs) for path, runs in engine.items()}
        cpu_ms = {path: statistics.median(runs) for path, runs in cpu.items()}
        e = rates.get(chosen, rates[paths[0]])
        row = {"engine_tok_s": round(e, 2), "plain_tok_s": round(p, 2), "ratio": round(e / p, 3)}
        for path, rate in rates.items():
            row[f"{path}_tok_s"], row[f"{path}_ratio"] = round(rate, 2), round(rate / p, 3)
            row[f"{path}_cpu_ms_per_token"] = round(cpu_ms[path], 2)
        results[str(batch)] = row
        side = ", ".join(
            f"{path} {rate:.1f} tok/s ({rate / p:.3f}x, {cpu_ms[path]:.1f} CPU ms/token)"
            for path, rate in rates.items()
        )
        runs = "; ".join(f"{path} {[round(x, 1) for x in xs]}" for path, xs in engine.items())
        say(
            f"batch {batch}: plain loop {p:.1f} tok/s; engine sampling on the {side}  (runs: {runs}; plain {[round(x, 1) for x in plain]})"
        )
    model.device_sampling = chosen == "device"
    for seq in prompts:
        model.release(seq)
    return results


def bench_score(model: LlamaModel, n_candidates: int = 4, length: int = 64) -> float:
    beam = model.start(model.format_chat(SYSTEM_PROMPT, QUESTIONS[1]))
    rng = np.random.default_rng(0)
    # Plain text tokens, distinct from the first one on, so nothing is shared.
    pool = model.tokenize(" ".join(QUESTIONS))
    candidates = [list(rng.choice(pool, length)) for _ in range(n_candidates)]
    t0 = time.perf_counter()
    scored = model.score([(beam, c) for c in candidates])
    elapsed = time.perf_counter() - t0
    for s in scored:
        model.release(s.seq)
    model.release(beam)
    rate = n_candidates * length / elapsed
    say(f"teacher-forced scoring: {n_candidates} x {length} tokens in {elapsed:.2f} s = {rate:.1f} tok/s")
    return rate


def bench_hidden(model: LlamaModel, n_tokens: int, rounds: int) -> dict[str, float]:
    """What asking for hidden states (a value head's input) costs: sampling 4
    rows and teacher-forcing 4 x 64 tokens with and without them, interleaved,
    as CPU time per token (steady on a shared machine) and wall time."""
    prompts = [model.start(model.format_chat(SYSTEM_PROMPT, q)) for q in QUESTIONS[:4]]
    beam = prompts[1]
    pool = model.tokenize(" ".join(QUESTIONS))
    rng = np.random.default_rng(0)
    candidates = [[int(t) for t in rng.choice(pool, 64)] for _ in range(4)]
    before = model.hidden_states
    cost: dict[str, list[float]] = {"sample_off": [], "sample_on": [], "score_off": [], "score_on": []}
    for r in range(rounds + 1):  # the first round warms buffers up and is not counted
        for on in (False, True):
            model.hidden_states = on
            _, sample_ms = engine_sampling(model, prompts, n_tokens, seed=r)
            c0 = time.process_time()
            scored = model.score([(beam, c) for c in candidates])
            score_ms = (time.process_time() - c0) * 1000 / (4 * 64)
            for s in scored:
                model.release(s.seq)
            if r:
                cost[f"sample_{'on' if on else 'off'}"].append(sample_ms)
                cost[f"score_{'on' if on else 'off'}"].append(score_ms)
    model.hidden_states = before
    for seq in prompts:
        model.release(seq)
    med = {k: statistics.median(v) for k, v in cost.items()}
    out = {
        "sampling_ratio": round(med["sample_on"] / med["sample_off"], 3),
        "scoring_ratio": round(med["score_on"] / med["score_off"], 3),
    }
    say(
        f"hidden states: sampling 4 rows {med['sample_off']:.1f} -> {med['sample_on']:.1f} CPU ms/token "
        f"({out['sampling_ratio']:.3f}x), teacher forcing {med['score_off']:.2f} -> {med['score_on']:.2f} "
        f"CPU ms/token ({out['scoring_ratio']:.3f}x)"
    )
    return out


def bench_layer_tap(model: LlamaModel, tapped: LlamaModel, n_tokens: int, rounds: int) -> dict[str, float]:
    """What reading a middle layer's output (a value head on `tapped.hidden_layer`)
    costs: the same decodes as `bench_hidden` on `model` without hidden states,
    on `tapped` with its eval callback asked but not armed (as in prefill), and
    armed, interleaved. Wall time per token as well as CPU time: the callback
    runs between graph computations, while llama.cpp's worker threads spin,
    so it costs more CPU time than wall time."""
    runs = {"plain": (model, False), "unarmed": (tapped, False), "armed": (tapped, True)}
    starts = {name: [m.start(m.format_chat(SYSTEM_PROMPT, q)) for q in QUESTIONS[:4]] for name, (m, _) in runs.items()}
    pool = model.tokenize(" ".join(QUESTIONS))
    rng = np.random.default_rng(0)
    candidates = [[int(t) for t in rng.choice(pool, 64)] for _ in range(4)]
    cost: dict[str, list[float]] = {
        f"{kind}_{clock}_{name}": [] for kind in ("sample", "score") for clock in ("wall", "cpu") for name in runs
    }
    before = tapped.hidden_states
    for r in range(rounds + 1):  # the first round warms buffers up and is not counted
        for name, (m, on) in runs.items() if r % 2 else reversed(runs.items()):
            m.hidden_states = on
            tok_s, sample_cpu_ms = engine_sampling(m, starts[name], n_tokens, seed=r)
            t0, c0 = time.perf_counter(), time.process_time()
            scored = m.score([(starts[name][1], c) for c in candidates])
            score_wall_ms = (time.perf_counter() - t0) * 1000 / (4 * 64)
            score_cpu_ms = (time.process_time() - c0) * 1000 / (4 * 64)
            for result in scored:
                m.release(result.seq)
            if r:
                cost[f"sample_wall_{name}"].append(1000 / tok_s)
                cost[f"sample_cpu_{name}"].append(sample_cpu_ms)
                cost[f"score_wall_{name}"].append(score_wall_ms)
                cost[f"score_cpu_{name}"].append(score_cpu_ms)
    tapped.hidden_states = before
    for name, (m, _) in runs.items():
        for seq in starts[name]:
            m.release(seq)
    med = {k: statistics.median(v) for k, v in cost.items()}
    out = {
        f"{kind}_{clock}_{name}_ratio": round(med[f"{kind}_{clock}_{name}"] / med[f"{kind}_{clock}_plain"], 3)
        for kind in ("sample", "score")
        for clock in ("wall", "cpu")
        for name in ("unarmed", "armed")
    }
    for kind, label in (("sample", "sampling 4 rows"), ("score", "teacher forcing")):
        parts = []
        for clock in ("wall", "cpu"):
            parts.append(
                f"{clock} {med[f'{kind}_{clock}_plain']:.2f} -> unarmed {med[f'{kind}_{clock}_unarmed']:.2f} "
                f"({out[f'{kind}_{clock}_unarmed_ratio']:.3f}x), armed {med[f'{kind}_{clock}_armed']:.2f} "
                f"({out[f'{kind}_{clock}_armed_ratio']:.3f}x)"
            )
        say(f"layer {tapped.hidden_layer} tap, {label}, ms/token: " + "; ".join(parts))
    return out


class PrefixCounter:
    """Distinct token prefixes of every sequence inserted (a trie's node count)."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}
        self.nodes = 0

    def add(self, tokens: list[int]) -> None:
        node = self.root
        for t in tokens:
            child = node.get(t)
            if child is None:
                child = node[t] = {}
                self.nodes += 1
            node = child


def bench_search(draft: LlamaModel, target: LlamaModel, steps: int = 10, k: int = 4) -> tuple[int, int]:
    """Rows the engine decodes over a scripted search against the distinct rows it needs."""
    before = draft.usage.decoded_rows + target.usage.decoded_rows
    prompt = draft.prompt_tokens(draft.format_chat(SYSTEM_PROMPT, SEARCH_QUESTION))
    draft_beam: Seq = draft.start(prompt)
    target_beam: Seq = target.start(prompt)
    needed_draft, needed_target = PrefixCounter(), PrefixCounter()
    beam_tokens = list(prompt)
    for step in range(steps):
        params = SampleParams(temperature=0.3, max_tokens=48, seed=step)
        drafts = draft.sample([draft_beam], k, params)[0]
        scored = target.score([(target_beam, d.tokens) for d in drafts])
        # The beam is continued (its last token is decoded now, if it was a
        # candidate's); a candidate's own last token only if it is kept.
        for needed in (needed_draft, needed_target):
            needed.add(beam_tokens)
            for d in drafts:
                needed.add(beam_tokens + d.tokens[:-1])
        best = max(range(k), key=lambda j: float(np.mean(scored[j].logprobs)))
        for j in range(k):
            if j != best:
                draft.release(drafts[j].seq)
                target.release(scored[j].seq)
        draft.release(draft_beam)
        target.release(target_beam)
        draft_beam, target_beam = drafts[best].seq, scored[best].seq
        beam_tokens = beam_tokens + drafts[best].tokens
        if drafts[best].stop is StopReason.EOS:
            break
    draft.release(draft_beam)
    target.release(target_beam)
    decoded = draft.usage.decoded_rows + target.usage.decoded_rows - before
    distinct = needed_draft.nodes + needed_target.nodes
    say(f"scripted search ({step + 1} steps, k={k}): {decoded} rows decoded, {distinct} distinct rows needed")
    return decoded, distinct


def bench_merge(model: LlamaModel, temperature: float, k: int = 8, rounds: int = 2) -> float:
    beam = model.start(model.format_chat(SYSTEM_PROMPT, SEARCH_QUESTION))
    times: dict[bool, list[float]] = {True: [], False: []}
    rows: dict[bool, list[int]] = {True: [], False: []}
    same = 0
    for r in range(rounds):
        drafts_by_mode = {}
        for share in (True, False):
            model.share_histories = share
            params = SampleParams(temperature=temperature, max_tokens=48, seed=r)
            rows0 = model.usage.decoded_rows
            t0 = time.perf_counter()
            drafts = model.sample([beam], k, params)[0]
            times[share].append(time.perf_counter() - t0)
            rows[share].append(model.usage.decoded_rows - rows0)
            drafts_by_mode[share] = [d.tokens for d in drafts]
            for d in drafts:
                model.release(d.seq)
        # Equal up to llama.cpp's numerics: quantized kernels give slightly
        # different logits for a row decoded alone or among others.
        same += sum(a == b for a, b in zip(drafts_by_mode[True], drafts_by_mode[False]))
    model.share_histories = True
    model.release(beam)
    speedup = statistics.median(times[False]) / statistics.median(times[True])
    say(
        f"T={temperature}: shared histories decode {sum(rows[True])} rows, unshared {sum(rows[False])}; "
        f"speed-up {speedup:.2f}x; identical drafts {same}/{rounds * k}"
    )
    return speedup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a GGUF file")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: up to 8 available cores)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sampling run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions per batch size")
    parser.add_argument(
        "--sampling",
        choices=("auto", "host", "device", "both"),
        default="both",
        help="where the engine draws step tokens: the model's own choice, numpy, llama.cpp's graph, or both side by side",
    )
    parser.add_argument(
        "--layer", type=int, help="also measure reading this layer's output (a value head on a middle layer)"
    )
    parser.add_argument("--quick", action="store_true", help="only the batch and teacher-forcing measurements")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    global _quiet
    _quiet = args.json

    sampling = {"both": None, "auto": None}.get(args.sampling, args.sampling)
    model = LlamaModel(args.model, n_threads=args.threads, n_seq_max=32, sampling=sampling)
    chosen = "device" if model.device_sampling else "host"
    paths = {"both": ["host", "device"], "auto": [chosen]}.get(args.sampling, [args.sampling])
    unavailable = unavailable_reason()
    if unavailable is not None and "device" in paths:
        say(f"no sampling in llama.cpp's graph here: {unavailable}")
        paths = [path for path in paths if path != "device"] or ["host"]
    say(
        f"{model.name}: n_ctx {model.n_ctx}, {model.n_threads} threads, gpu layers {model.gpu_layers}, "
        f"samples on the {chosen} by itself"
    )
    result: dict[str, object] = {"sampling": chosen, "batch": bench_batches(model, args.tokens, args.rounds, paths)}
    result["score_tok_s"] = round(bench_score(model), 2)
    result["hidden_states_cost"] = bench_hidden(model, args.tokens, args.rounds)
    if args.layer is not None:
        tapped = LlamaModel(
            args.model,
            n_threads=args.threads,
            n_seq_max=32,
            sampling=sampling,
            hidden_states=True,
            hidden_layer=args.layer,
        )
        result["layer_tap_cost"] = bench_layer_tap(model, tapped, args.tokens, args.rounds)
        tapped.close()
    rss = rss_mb()
    budget = (args.model.stat().st_size + model.kv_cache_bytes) / 2**20 + RSS_MARGIN_MB
    say(f"resident memory {rss:.0f} MB, budget {budget:.0f} MB (file + KV cache + {RSS_MARGIN_MB} MB)")
    result |= {"rss_mb": round(rss, 1), "rss_budget_mb": round(budget, 1)}
    if not args.quick:
        target = LlamaModel(args.model, name="target", n_threads=args.threads, n_seq_max=32, sampling=sampling)
        result["decoded_rows"], result["distinct_rows"] = bench_search(model, target)
        target.close()
        result["merge_speedup"] = {str(t): round(bench_merge(model, t), 3) for t in (0.2, 0.8)}
    model.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
