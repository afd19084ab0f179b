"""How well the arithmetic check tells right results from wrong ones.

Reads the SPECS traces a `specs-local bench --trace-dir DIR` run wrote,
teacher-forces every draft candidate through the target model after the
prefix it was drafted on, and for each result written after "=" whose
left-hand side is plain arithmetic, compares the target's probability of the
result with whether the arithmetic is right. Prints the separation and, per
threshold, how many wrong results the check flags and how many right ones it
flags by mistake.

    python scripts/check_results.py bench-out/gsm8k-traces --target MODEL.gguf
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.search.arithmetic import results_with_probability
from app.search.events import CandidatesDrafted, SearchStarted, StepAccepted
from app.search.trace import read_trace
from engines.base import SYSTEM_PROMPT
from engines.llama import LlamaModel

_OPERATORS = [("\\times", "*"), ("×", "*"), ("\\cdot", "*"), ("\\div", "/"), ("÷", "/"), ("\\$", ""), ("$", "")]
_ARITHMETIC_TAIL = re.compile(r"[\d\s.+\-*/()]+$")


def truth(text: str, start: int, end: int) -> bool | None:
    """Whether the result at text[start:end] equals the plain arithmetic before
    its "=" (None when that is not plain arithmetic)."""
    eq = text.rfind("=", 0, start)
    lhs = text[max(text.rfind("=", 0, eq), text.rfind("\n", 0, eq)) + 1 : eq] if eq > 0 else ""
    for a, b in _OPERATORS:
        lhs = lhs.replace(a, b)
    lhs = re.sub(r"(?<=\d),(?=\d{3})", "", lhs)
    tail = _ARITHMETIC_TAIL.search(lhs)
    lhs = tail.group(0).strip() if tail else ""
    if lhs.count("(") != lhs.count(")") or not re.search(r"\d\s*[+\-*/]\s*[\d(]", lhs):
        return None
    try:
        value = eval(lhs, {"__builtins__": {}})  # digits, operators and brackets only (checked above)
    except (SyntaxError, ZeroDivisionError):
        return None
    written = text[start:end].replace(",", "")
    if end == len(text):
        return None  # the step was cut inside the number
    # Right when it is the value rounded or cut to the decimals written.
    decimals = len(written.partition(".")[2])
    rounded = abs(value - float(written)) <= 0.5 * 10.0**-decimals + 1e-9
    cut = math.isclose(math.trunc(value * 10**decimals), float(written) * 10**decimals, abs_tol=1e-6)
    return rounded or cut


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", type=Path, help="directory of bench traces (*.specs.jsonl are read)")
    parser.add_argument("--target", type=Path, required=True, help="the target model's GGUF file")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="read at most this many traces")
    parser.add_argument(
        "--show",
        type=float,
        default=None,
        metavar="P",
        help="print right results below P and wrong ones at or above it, with their text",
    )
    args = parser.parse_args()

    files = sorted(args.traces.glob("*.specs.jsonl"))[: args.limit]
    if not files:
        print(f"No SPECS traces in {args.traces}; run `specs-local bench --trace-dir {args.traces}` first.")
        return 2
    probs: dict[bool, list[float]] = {True: [], False: []}
    with LlamaModel(args.target, name="target", n_ctx=4096, n_seq_max=16, n_threads=args.threads) as model:
        for path in files:
            events = list(read_trace(path))
            started = next(e for e in events if isinstance(e, SearchStarted))
            prefix = model.start(model.format_chat(SYSTEM_PROMPT, started.question))
            for event in events:
                if isinstance(event, CandidatesDrafted) and event.origin == "draft":
                    seen: set[str] = set()
                    for cand in event.candidates:
                        if cand.text in seen:
                            continue
                        seen.add(cand.text)
                        tokens = model.tokenize(cand.text)
                        (scored,) = model.score([(prefix, tokens)])
                        model.release(scored.seq)
                        found = results_with_probability(cand.text, tokens, scored.logprobs, model.detokenize)
                        for (start, end), p in found:
                            right = truth(cand.text, start, end)
                            if right is None:
                                continue
                            probs[right].append(p)
                            if args.show is not None and (p < args.show) == right:
                                line = cand.text[max(0, start - 60) : end + 10].replace("\n", " ")
                                print(f"  {'right' if right else 'WRONG'} p={p:.3f}  ...{line}")
                elif isinstance(event, StepAccepted):
                    model.extend(prefix, model.tokenize(event.text))
            model.release(prefix)
            print(f"{path.name}: {len(probs[True])} right, {len(probs[False])} wrong results so far", flush=True)

    right_probs, wrong_probs = probs[True], probs[False]
    print(f"\nresults with plain arithmetic: {len(right_probs)} right, {len(wrong_probs)} wrong")
    for name, values in (("right", right_probs), ("wrong", wrong_probs)):
        if values:
            q = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
            print(f"  {name}: median p {statistics.median(values):.3f}, p10 {q[0]:.3f}, p90 {q[-1]:.3f}")
    for threshold in (0.05, 0.1, 0.2, 0.3, 0.5):
        flagged_wrong = sum(p < threshold for p in wrong_probs)
        flagged_right = sum(p < threshold for p in right_probs)
        print(
            f"  threshold {threshold:.2f}: flags {flagged_wrong}/{len(wrong_probs)} wrong,"
            f" {flagged_right}/{len(right_probs)} right"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
