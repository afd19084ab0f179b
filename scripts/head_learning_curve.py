"""Would a value head gain from more training problems, and from the arithmetic check?

Reads the step features a `specs-local train-head --out FILE` run kept in
FILE.work/features, holds out the problems train-head holds out (the same
hash of each problem id), and fits heads the way train-head does (L2 chosen
on a validation fifth, by problem) on random subsets of the other problems,
several draws per size. Prints the held-out step AUC per number of problems
fitted on: a curve still rising at the right end says more rollouts are worth
their hours. With --head, also the AUC of that head's reward after the
arithmetic check at each threshold (reward x p / c when the step's least
likely result has probability p < c, as the search applies it).

    python scripts/head_learning_curve.py ~/heads/cpu-dev.safetensors.work --head app/heads/cpu-dev.safetensors
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.eval.head_features import StepFeatures
from app.eval.head_fit import Split, auc, fit_head, split_by_problem
from app.search.arithmetic import checked_reward
from engines.value_head import HeadFileError, load_head

VALID_SHARE = 0.2  # of the fitted problems, as train-head splits them


@dataclass(frozen=True)
class CurvePoint:
    problems: int
    aucs: list[float]  # one per draw that could be fitted and graded


def load_features(work: Path) -> StepFeatures:
    parts = sorted((work / "features").glob("*.npz"))
    if not parts:
        raise SystemExit(f"{work} holds no step features; run `specs-local train-head` until its features phase ends")
    return StepFeatures.concat([StepFeatures.load(p) for p in parts])


def fitted_and_held_out(features: StepFeatures) -> tuple[list[str], list[str]]:
    """The problems train-head fits on and those it holds out."""
    held_out = split_by_problem(features.problems).test
    problems = np.array(features.problems)
    return sorted(set(problems[~held_out])), sorted(set(problems[held_out]))


def learning_curve(features: StepFeatures, sizes: list[int], draws: int, seed: int = 0) -> list[CurvePoint]:
    """Held-out AUC of heads fitted on `size` of the fitted problems, `draws` random subsets each."""
    problems = np.array(features.problems)
    held_out = split_by_problem(features.problems).test
    pool, _ = fitted_and_held_out(features)
    x = features.states.astype(np.float64)
    rng = np.random.default_rng(seed)
    points = []
    for size in sizes:
        size = min(size, len(pool))
        aucs = []
        for _ in range(draws if size < len(pool) else 1):
            if size == len(pool):  # every problem: train-head's own split, so its AUC is the head file's
                split = split_by_problem(features.problems)
            else:
                chosen = [str(p) for p in rng.permutation(pool)[:size]]
                valid = chosen[: max(1, round(size * VALID_SHARE))]
                train = chosen[len(valid) :]
                split = Split(train=np.isin(problems, train), valid=np.isin(problems, valid), test=held_out)
            try:
                fit = fit_head(x, features.labels, split)
            except ValueError:  # a draw whose problems are all right or all wrong, or too few
                continue
            score = auc(((x[held_out] - fit.mean) / fit.std) @ fit.weight + fit.bias, features.labels[held_out])
            if score is not None:
                aucs.append(score)
        points.append(CurvePoint(size, aucs))
    return points


def result_check_rows(
    rewards: np.ndarray, features: StepFeatures, thresholds: list[float]
) -> list[tuple[float, float | None, int, int]]:
    """(threshold, held-out AUC, steps flagged, wrong steps flagged) for each threshold."""
    held_out = split_by_problem(features.problems).test
    labels = features.labels[held_out]
    probs = [None if np.isnan(p) else float(p) for p in features.result_prob[held_out]]
    rows = []
    for c in thresholds:
        checked = np.array([checked_reward(float(r), p, c) for r, p in zip(rewards[held_out], probs, strict=True)])
        flagged = np.array([c > 0 and p is not None and p < c for p in probs], dtype=bool)
        rows.append((c, auc(checked, labels), int(flagged.sum()), int((flagged & (labels < 0.5)).sum())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a train-head work folder (OUT.work)")
    parser.add_argument("--sizes", default="", help="problem counts to fit on, e.g. 5,10,20 (default: quarters)")
    parser.add_argument("--draws", type=int, default=5, help="random subsets per size")
    parser.add_argument("--head", type=Path, help="a head file to check the arithmetic check against")
    parser.add_argument("--thresholds", default="0,0.1,0.2,0.3,0.5,0.9", help="arithmetic check thresholds")
    args = parser.parse_args(argv)
    if not args.work.is_dir():
        parser.error(f"{args.work} is not a folder; pass the OUT.work folder of a train-head run")
    features = load_features(args.work)
    fitted, held_out = fitted_and_held_out(features)
    pool = len(fitted)
    try:
        sizes = (
            [int(s) for s in args.sizes.split(",")]
            if args.sizes
            else sorted({max(2, pool * q // 4) for q in (1, 2, 3, 4)})
        )
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        parser.error("--sizes takes whole numbers and --thresholds numbers, comma-separated, e.g. --sizes 5,10")
    print(
        f"{pool} problems to fit on, {len(held_out)} held out ({sum(p in held_out for p in features.problems)} steps)"
    )
    print("| problems fitted on | held-out AUC (mean) | min | max | draws |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for point in learning_curve(features, sizes, args.draws):
        if point.aucs:
            print(
                f"| {point.problems} | {np.mean(point.aucs):.3f} | {min(point.aucs):.3f} | {max(point.aucs):.3f} | {len(point.aucs)} |"
            )
        else:
            print(f"| {point.problems} | - | - | - | 0 (no draw had right and wrong solutions to fit) |")
    if args.head:
        try:
            head = load_head(args.head)
        except HeadFileError as e:
            parser.error(str(e))
        if head.hidden_size != features.states.shape[1]:
            parser.error(
                f"{args.head} is for hidden size {head.hidden_size}, the features have {features.states.shape[1]}"
            )
        rewards = head.rewards(features.states.astype(np.float64))
        print(f"\n{args.head.name} with the arithmetic check (reward x p / c below c):")
        print("| c | held-out AUC | steps flagged | wrong ones among them |")
        print("| ---: | ---: | ---: | ---: |")
        for c, score, flagged, wrong in result_check_rows(rewards, features, thresholds):
            print(f"| {c:g} | {'-' if score is None else f'{score:.4f}'} | {flagged} | {wrong} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
