"""Report numbers checked by hand on a small synthetic results.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.errors import UserError
from app.eval.report import ratio_of_means, summarise, wilson, write_report


def row(
    problem: str,
    method: str,
    correct: bool,
    latency: float,
    *,
    steps: int = 4,
    draft_steps: int = 0,
    deferrals: int = 0,
    overhead: float = 0.0,
    error: str | None = None,
    search: str | None = None,
) -> dict[str, Any]:
    return {
        "id": problem,
        "method": method,
        "search": search or method,
        "answer": "x",
        "reference": "x",
        "correct": correct,
        "latency": latency,
        "wall_seconds": latency,
        "overhead_seconds": overhead,
        "models": {
            "target": {"seconds": latency / 2, "native_seconds": latency / 2, "generated": 10, "prefilled": 100}
        },
        "steps": steps,
        "draft_steps": draft_steps,
        "target_steps": steps - draft_steps,
        "deferrals": deferrals,
        "switches": 0,
        "acceptance": draft_steps / steps,
        "error": error,
    }


BEAM = [row("a", "beam", True, 10), row("b", "beam", True, 20), row("c", "beam", False, 30), row("d", "beam", True, 40)]
# SPECS takes exactly half of beam's time on every problem: every bootstrap ratio is 0.5
SPECS = [
    row("a", "specs", True, 5, draft_steps=2, deferrals=1, overhead=1.0),
    row("b", "specs", True, 10, draft_steps=3, overhead=1.0),
    row("c", "specs", True, 15, draft_steps=1, deferrals=1, overhead=1.0),
    row("d", "specs", False, 20, draft_steps=2, overhead=1.0),
]
GREEDY = [
    row("a", "greedy", False, 8),
    row("b", "greedy", True, 8),
    row("c", "greedy", False, 8),
    row("d", "greedy", False, 1, error="ContextFullError: too long"),
]


def test_wilson_matches_hand_computed_values() -> None:
    assert wilson(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_summary_numbers() -> None:
    summary = summarise(BEAM + SPECS + GREEDY, reference="beam", order=["specs", "beam", "greedy"])
    assert list(summary["methods"]) == ["specs", "beam", "greedy"]
    assert summary["problems"] == 4
    beam, specs, greedy = (summary["methods"][m] for m in ("beam", "specs", "greedy"))

    assert (beam["n"], beam["correct"], beam["accuracy"]) == (4, 3, 0.75)
    assert beam["accuracy_ci"] == pytest.approx([0.3006, 0.9544], abs=1e-4)
    assert beam["latency"] == pytest.approx({"mean": 25.0, "median": 25.0, "p90": 37.0})  # p90: 30 + 0.7 * 10
    assert beam["latency_ratio"]["value"] == 1.0
    assert beam["acceptance_rate"] is None and beam["deferral_rate"] is None  # no draft in beam search

    assert specs["accuracy"] == 0.75
    assert specs["latency_ratio"]["value"] == pytest.approx(0.5)
    assert specs["latency_ratio"]["ci"] == pytest.approx([0.5, 0.5])
    assert specs["latency_ratio"]["pairs"] == 4
    assert specs["acceptance_rate"] == pytest.approx(8 / 16)
    assert specs["deferral_rate"] == pytest.approx(2 / 16)
    assert specs["overhead_share"] == pytest.approx(4 / 50)
    assert specs["models"]["target"] == pytest.approx({"seconds": 6.25, "generated": 10, "prefilled": 100})

    # a run that raised counts as wrong and stays out of the latency numbers
    assert (greedy["n"], greedy["correct"], greedy["errors"]) == (4, 1, 1)
    assert greedy["latency"]["mean"] == 8.0
    assert greedy["latency_ratio"]["pairs"] == 3
    assert greedy["latency_ratio"]["value"] == pytest.approx(24 / 60)


def test_claim_met_when_as_accurate_and_fast_enough() -> None:
    claim = summarise(BEAM + SPECS)["claim"]
    assert claim["met"] is True and claim["evaluated"] is True
    assert (claim["accuracy"], claim["reference_accuracy"], claim["latency_ratio"]) == (0.75, 0.75, 0.5)
    assert claim["sentence"].startswith(
        "Claim met: on 4 shared problems specs is 75.0% accurate against 75.0% for beam"
    )


def test_claim_not_met_when_slower_or_less_accurate() -> None:
    slow = [{**r, "latency": r["latency"] * 1.8} for r in SPECS]  # ratio 0.9
    claim = summarise(BEAM + slow)["claim"]
    assert claim["met"] is False and claim["latency_ratio"] == pytest.approx(0.9)
    assert claim["sentence"].startswith("Claim not met")
    worse = [{**r, "correct": False} if r["id"] == "a" else r for r in SPECS]  # fast, but 50% < 75%
    claim = summarise(BEAM + worse)["claim"]
    assert claim["met"] is False and "(lower)" in claim["sentence"]


def test_claim_not_evaluated_without_the_reference() -> None:
    claim = summarise(SPECS + GREEDY)["claim"]
    assert claim["evaluated"] is False and claim["met"] is None
    assert "needs both specs and beam" in claim["sentence"]
    # another reference method is honoured
    assert summarise(SPECS + GREEDY, reference="greedy")["claim"]["evaluated"] is True


def test_bootstrap_interval_is_paired_and_reproducible() -> None:
    a = [1.0, 2.0, 3.0, 10.0, 4.0]
    b = [2.0, 2.0, 4.0, 12.0, 4.0]
    point, (low, high) = ratio_of_means(a, b)
    assert point == pytest.approx(20 / 24)
    assert low < point < high
    assert min(x / y for x, y in zip(a, b)) <= low and high <= max(x / y for x, y in zip(a, b))
    assert ratio_of_means(a, b) == (point, (low, high))


def test_write_report_files(tmp_path: Path) -> None:
    # 0% and 100% put the point on the end of its interval; the plot must cope
    never = [row(p, "never", False, 3) for p in "abcd"]
    always = [row(p, "always", True, 3) for p in "abcd"]
    (tmp_path / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in BEAM + SPECS + GREEDY + never + always)
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "dataset": {"name": "gsm8k", "source": "gsm8k.jsonl"},
                "preset": "cpu-dev",
                "models": {"draft": "d", "target": "t"},
                "settings": {"n": 4},
                "arms": {"specs": {}, "beam": {}, "greedy": {}, "never": {}, "always": {}},
            }
        )
    )
    summary = write_report(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    report = (tmp_path / "report.md").read_text()
    assert (
        "| specs | 4 | 75.0% (30.1%-95.4%) | 12.50 | 12.50 | 18.50 | 0.50 (0.50-0.50) | 50.0% | 0.12 | 8.0% | 0 |"
        in report
    )
    assert "| greedy | 4 | 25.0% " in report and "| 1 |" in report
    assert "| never | 4 | 0.0% (0.0%-49.0%)" in report and "| always | 4 | 100.0% (51.0%-100.0%)" in report
    assert "| specs | target | 6.25 | 10 | 100 |" in report
    assert summary["claim"]["sentence"] in report
    assert "dataset: gsm8k (gsm8k.jsonl), 4 problems" in report
    png = (tmp_path / "accuracy_latency.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_report_without_results_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no results yet"):
        write_report(tmp_path)
