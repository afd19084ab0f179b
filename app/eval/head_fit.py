"""Fitting a value head: L2-regularised logistic regression on standardised
hidden states, the regularisation chosen on problems held out from the fit,
and the AUC of the head and of other step signals on problems held out from
both.

Plain numpy, Newton's method: the model has hidden size + 1 parameters
(1,537 for a 1.5B Qwen), so each Newton step is one small linear solve and
the fit converges to the exact optimum in a few steps, with no 100 MB
dependency (scikit-learn's lbfgs would give the same weights).

Splits are by problem, never by step: the steps of one solution are nearly
the same state, so a split by step would grade the head on what it saw.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ONE_GRADE = "every solution has the same grade; a head needs right and wrong solutions to learn from"
# The L2 strengths tried (on the mean loss: lambda * |w|^2 / 2 is added to it).
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # boolean masks over steps
    valid: np.ndarray
    test: np.ndarray


def split_by_problem(problems: Sequence[str], *, test: float = 0.25, valid: float = 0.2, seed: int = 0) -> Split:
    """Each problem's steps go to one part, chosen by a hash of its id (stable
    as more rollouts are added)."""
    buckets = np.array([(zlib.crc32(f"{seed}/{p}".encode()) % 10_000) / 10_000 for p in problems])
    is_test = buckets < test
    is_valid = ~is_test & (buckets < test + valid * (1 - test))
    return Split(train=~is_test & ~is_valid, valid=is_valid, test=is_test)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # Constant features (rare, but a fixed norm weight can make one) get a unit scale.
    std = np.where(std > 1e-6, std, 1.0)
    return mean, std


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, *, max_iter: int = 50, tol: float = 1e-8
) -> tuple[np.ndarray, float]:
    """Weights and bias minimising mean log-loss + l2 |w|^2 / 2 (bias not
    penalised), the right and the wrong side weighted to count equally. Labels
    may be soft (a Monte-Carlo share of right endings): each step then counts
    on both sides, by its share."""
    n, d = x.shape
    pos = float(y.mean())
    if pos <= 0.0 or pos >= 1.0:
        raise ValueError(ONE_GRADE)
    w_right, w_wrong = 0.5 / pos / n, 0.5 / (1 - pos) / n
    xb = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    theta[-1] = math.log(pos / (1 - pos))
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(max_iter):
        z = xb @ theta
        p = 1.0 / (1.0 + np.exp(-z))
        # d/dz of -(w_right y log p + w_wrong (1 - y) log(1 - p))
        residual = w_wrong * (1 - y) * p - w_right * y * (1 - p)
        curvature = (w_right * y + w_wrong * (1 - y)) * p * (1 - p)
        grad = xb.T @ residual + penalty * theta
        hess = (xb * curvature[:, None]).T @ xb + np.diag(penalty + 1e-10)
        delta = np.linalg.solve(hess, grad)
        theta -= delta
        if float(np.abs(delta).max()) < tol:
            break
    return theta[:-1], float(theta[-1])


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class HeadFit:
    weight: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    l2: float
    valid_auc: dict[float, float | None]  # per L2 strength tried


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    split: Split,
    grid: Sequence[float] = L2_GRID,
    *,
    eval_labels: np.ndarray | None = None,
) -> HeadFit:
    """Choose L2 by validation AUC (against `eval_labels`, the outcomes, when `y`
    is soft), then refit on train + validation."""
    graded = y if eval_labels is None else eval_labels
    fitted = y[split.train | split.valid]
    if len(fitted) and (fitted.min() == fitted.max()):
        raise ValueError(ONE_GRADE)
    if not split.train.any() or not split.valid.any():
        raise ValueError(
            "too few problems to fit a head and choose its regularisation on others"
            " (a quarter of the problems is held out, a fifth of the rest validates)"
        )
    fit_rows = split.train | split.valid
    mean, std = standardiser(x[fit_rows])
    z = (x - mean) / std
    valid_auc: dict[float, float | None] = {}
    for l2 in grid:
        w, b = fit_logistic(z[split.train], y[split.train], l2)
        valid_auc[l2] = auc(z[split.valid] @ w + b, graded[split.valid])
    best = max(grid, key=lambda l2: (valid_auc[l2] if valid_auc[l2] is not None else -1.0, l2))
    w, b = fit_logistic(z[fit_rows], y[fit_rows], best)
    return HeadFit(w, b, mean, std, best, valid_auc)


def auc_table(
    signals: Mapping[str, np.ndarray], labels: np.ndarray, rows: np.ndarray
) -> dict[str, dict[str, float | int | None]]:
    """AUC of each signal (higher = more likely right) on the steps `rows`
    where that signal is known (not NaN)."""
    table: dict[str, dict[str, float | int | None]] = {}
    for name, values in signals.items():
        known = rows & ~np.isnan(values)
        table[name] = {"auc": auc(values[known], labels[known]), "steps": int(known.sum())}
    return table
