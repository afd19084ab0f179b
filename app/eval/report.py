"""From DIR/results.jsonl to DIR/summary.json, DIR/report.md and a plot.

Accuracy counts every run (a run that raised is wrong) with a Wilson 95%
interval. Latency statistics leave out runs that raised, whose time means
nothing. The latency ratio of a method to the reference method is the ratio
of mean latencies over the problems both solved without error, with a 95%
interval from a bootstrap over those problems (fixed seed, so a report is
reproducible). The paper's claim is that SPECS is at least as accurate as
beam search on the same problems at a latency ratio of at most 0.81 (about
19% faster).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import UserError
from app.eval.runner import CONFIG, RESULTS, read_results
from app.search.methods import needs_draft

CLAIM_METHOD = "specs"
CLAIM_RATIO = 0.81
BOOTSTRAP_SAMPLES = 5000
BOOTSTRAP_SEED = 0
Z95 = 1.959963984540054
PLOT = "accuracy_latency.png"


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1] for small n)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def ratio_of_means(
    latencies: Sequence[float],
    reference: Sequence[float],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, tuple[float, float]]:
    """mean(latencies) / mean(reference) over paired problems, with a paired
    percentile-bootstrap 95% interval (problems resampled together)."""
    a = np.asarray(latencies, dtype=float)
    b = np.asarray(reference, dtype=float)
    point = float(a.mean() / b.mean())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(samples, len(a)))
    ratios = a[picks].mean(axis=1) / b[picks].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return point, (float(low), float(high))


def summarise(rows: Sequence[dict[str, Any]], reference: str = "beam", order: Sequence[str] = ()) -> dict[str, Any]:
    """The numbers of summary.json from result lines."""
    methods = list(
        dict.fromkeys([*[m for m in order if any(r["method"] == m for r in rows)], *(r["method"] for r in rows)])
    )
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    summary: dict[str, Any] = {
        "reference": reference,
        "problems": len({r["id"] for r in rows}),
        "methods": {m: _method_summary(m, by_method[m], by_method.get(reference)) for m in methods},
    }
    summary["claim"] = claim(by_method.get(CLAIM_METHOD), by_method.get(reference), reference)
    return summary


def _method_summary(
    method: str, rows: list[dict[str, Any]], reference_rows: list[dict[str, Any]] | None
) -> dict[str, Any]:
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    ok = [r for r in rows if not r.get("error")]
    latencies = np.array([r["latency"] for r in ok], dtype=float)
    steps = sum(r["steps"] for r in ok)
    wall = sum(r["wall_seconds"] for r in ok)
    uses_draft = any(needs_draft(r.get("search", method)) for r in rows)
    roles = sorted({role for r in ok for role in r["models"]})
    out: dict[str, Any] = {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci": list(wilson(correct, n)),
        "errors": n - len(ok),
        "latency": {
            "mean": float(latencies.mean()) if len(ok) else None,
            "median": float(np.median(latencies)) if len(ok) else None,
            "p90": float(np.percentile(latencies, 90)) if len(ok) else None,
        },
        "acceptance_rate": sum(r["draft_steps"] for r in ok) / steps if uses_draft and steps else None,
        "deferral_rate": sum(r["deferrals"] for r in ok) / steps if uses_draft and steps else None,
        "overhead_share": sum(r["overhead_seconds"] for r in ok) / wall if wall > 0 else None,
        "models": {
            role: {
                key: sum(r["models"].get(role, {}).get(key, 0) for r in ok) / len(ok)
                for key in ("seconds", "generated", "prefilled")
            }
            for role in roles
        },
        "latency_ratio": None,
    }
    if reference_rows is not None:
        out["latency_ratio"] = paired_ratio(rows, reference_rows)
    return out


def _paired(rows: Sequence[dict[str, Any]], reference_rows: Sequence[dict[str, Any]]) -> list[tuple[dict, dict]]:
    theirs = {r["id"]: r for r in reference_rows}
    return [(r, theirs[r["id"]]) for r in rows if r["id"] in theirs]


def paired_ratio(rows: Sequence[dict[str, Any]], reference_rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    pairs = [(a, b) for a, b in _paired(rows, reference_rows) if not a.get("error") and not b.get("error")]
    if not pairs or sum(b["latency"] for _, b in pairs) <= 0:
        return None
    point, (low, high) = ratio_of_means([a["latency"] for a, _ in pairs], [b["latency"] for _, b in pairs])
    return {"value": point, "ci": [low, high], "pairs": len(pairs)}


def claim(
    rows: list[dict[str, Any]] | None, reference_rows: list[dict[str, Any]] | None, reference: str
) -> dict[str, Any]:
    """The paper's claim on the problems both methods ran: accuracy not lower,
    latency ratio at most 0.81."""
    if not rows or not reference_rows:
        return {
            "evaluated": False,
            "met": None,
            "sentence": f"The claim needs both {CLAIM_METHOD} and {reference} results; it was not evaluated.",
        }
    pairs = _paired(rows, reference_rows)
    ratio = paired_ratio(rows, reference_rows)
    if not pairs or ratio is None:
        return {
            "evaluated": False,
            "met": None,
            "sentence": f"{CLAIM_METHOD} and {reference} share no finished problem; the claim was not evaluated.",
        }
    accuracy = sum(bool(a["correct"]) for a, _ in pairs) / len(pairs)
    reference_accuracy = sum(bool(b["correct"]) for _, b in pairs) / len(pairs)
    accurate = accuracy >= reference_accuracy
    fast = ratio["value"] <= CLAIM_RATIO
    met = accurate and fast
    sentence = (
        f"Claim {'met' if met else 'not met'}: on {len(pairs)} shared problem{'s' if len(pairs) != 1 else ''} "
        f"{CLAIM_METHOD} is "
        f"{accuracy:.1%} accurate against {reference_accuracy:.1%} for {reference} "
        f"({'not lower' if accurate else 'lower'}) at {ratio['value']:.2f}x its latency "
        f"(95% CI {ratio['ci'][0]:.2f}-{ratio['ci'][1]:.2f}; the paper claims at most {CLAIM_RATIO})."
    )
    return {
        "evaluated": True,
        "met": met,
        "problems": len(pairs),
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "latency_ratio": ratio["value"],
        "latency_ratio_ci": ratio["ci"],
        "threshold": CLAIM_RATIO,
        "sentence": sentence,
    }


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(summary: dict[str, Any], config: dict[str, Any]) -> str:
    reference = summary["reference"]
    dataset = config.get("dataset", {})
    lines = ["# specs-local benchmark", ""]
    if dataset:
        lines.append(f"- dataset: {dataset['name']} ({dataset['source']}), {summary['problems']} problems")
    if config.get("preset"):
        models = ", ".join(f"{role} {name}" for role, name in config.get("models", {}).items())
        lines.append(f"- preset: {config['preset']} ({models})")
    if config.get("settings"):
        lines.append(f"- settings: {', '.join(f'{k}={v}' for k, v in config['settings'].items())}")
    lines += [
        "",
        (
            f"| method | n | accuracy (95% CI) | mean s | median s | p90 s | latency / {reference} (95% CI) "
            "| acceptance | deferrals / step | python overhead | errors |"
        ),
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for method, m in summary["methods"].items():
        low, high = m["accuracy_ci"]
        ratio = m["latency_ratio"]
        ratio_text = "-" if ratio is None else f"{ratio['value']:.2f} ({ratio['ci'][0]:.2f}-{ratio['ci'][1]:.2f})"
        lat = m["latency"]
        lines.append(
            f"| {method} | {m['n']} | {m['accuracy']:.1%} ({low:.1%}-{high:.1%}) | {_fmt(lat['mean'], '.2f')} "
            f"| {_fmt(lat['median'], '.2f')} | {_fmt(lat['p90'], '.2f')} | {ratio_text} "
            f"| {_fmt(m['acceptance_rate'], '.1%')} | {_fmt(m['deferral_rate'], '.2f')} "
            f"| {_fmt(m['overhead_share'], '.1%')} | {m['errors']} |"
        )
    lines += [
        "",
        "Per model, mean per problem (seconds inside the model, tokens sampled, tokens prefilled):",
        "",
        "| method | model | seconds | generated | prefilled |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for method, m in summary["methods"].items():
        for role, usage in m["models"].items():
            lines.append(
                f"| {method} | {role} | {usage['seconds']:.2f} | {usage['generated']:.0f} | {usage['prefilled']:.0f} |"
            )
    lines += ["", summary["claim"]["sentence"], "", f"![accuracy against latency]({PLOT})", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Accuracy (with its interval) against mean latency, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for method, m in summary["methods"].items():
            mean = m["latency"]["mean"]
            if mean is None:
                continue
            acc = 100 * m["accuracy"]
            low, high = (100 * x for x in m["accuracy_ci"])
            is_reference = method == summary["reference"]
            # rounding can put the interval a hair inside the point at 0% and 100%
            yerr = [[max(0.0, acc - low)], [max(0.0, high - acc)]]
            ax.errorbar([mean], [acc], yerr=yerr, fmt="s" if is_reference else "o", capsize=4, label=method)
            ax.annotate(method, (mean, acc), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.set_xlabel("mean latency per problem (s)")
        ax.set_ylabel("accuracy (%, 95% CI)")
        ax.set_title("Accuracy against latency")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_report(out_dir: Path, reference: str = "beam") -> dict[str, Any]:
    """Write summary.json, report.md and the plot of DIR; returns the summary."""
    rows = read_results(out_dir)
    if not rows:
        raise UserError(f"{out_dir / RESULTS} has no results yet; run `specs-local bench --out {out_dir}` first.")
    config_path = out_dir / CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    summary = summarise(rows, reference, order=list(config.get("arms", {})))
    summary["dataset"] = config.get("dataset")
    summary["preset"] = config.get("preset")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(summary, config), encoding="utf-8")
    plot(summary, out_dir / PLOT)
    return summary
