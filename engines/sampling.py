"""Drawing tokens from next-token logits on the host, in numpy.

Each candidate has a random stream of its own, seeded by (seed, input, candidate)
and drawn once per token, so its tokens do not depend on which other
candidates share its row, on the batch, or on the order of draws. A draw picks
a token by inverse CDF over exp((logits - max) / T), within the nucleus when
top_p < 1; T = 0 is the argmax and draws nothing. Every token comes with its
log-probability at T = 1 (the model's own distribution), which the search
compares between models whatever the sampling temperature.

Nothing here calls llama.cpp: `HostSampler.pick` reads a logits row that a
decode left and never writes to it (it may be llama.cpp's own buffer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from engines.base import SampleParams

BLOCK = 1024  # tokens per block of the two-level inverse-CDF search
# Tokens under e^-30 of the most likely one stay out of the nucleus's sort.
NUCLEUS_FLOOR = float(np.exp(-30.0))


def candidate_stream(seed: int, input_index: int, candidate: int) -> np.random.Generator:
    """The random stream of candidate `candidate` of input sequence `input_index`."""
    return np.random.default_rng([seed, input_index, candidate])


def logsumexp(row: np.ndarray, scratch: np.ndarray) -> tuple[float, float]:
    """(max, log(sum(exp(row)))) through a scratch row, leaving `row` untouched.

    `scratch[:len(row)]` holds exp(row - max) afterwards."""
    top = float(row.max())
    work = scratch[: len(row)]
    np.subtract(row, top, out=work)
    np.exp(work, out=work)
    return top, top + float(np.log(work.sum()))


def inverse_cdf(weights: np.ndarray, draws: Sequence[float]) -> list[int]:
    """Indices drawn in proportion to `weights`, one per uniform draw in [0, 1).

    Two levels, so each draw costs one block's cumulative sum, not the whole
    vocabulary's: block totals, then the token inside the chosen block."""
    n = len(weights)
    whole = n // BLOCK * BLOCK
    totals = np.empty(-(-n // BLOCK), np.float64)
    totals[: whole // BLOCK] = weights[:whole].reshape(-1, BLOCK).sum(axis=1)
    if whole < n:
        totals[-1] = weights[whole:].sum()
    cumulative = np.cumsum(totals)
    chosen = []
    for target in np.asarray(draws) * cumulative[-1]:
        block = min(int(np.searchsorted(cumulative, target, side="right")), len(cumulative) - 1)
        start = block * BLOCK
        inside = weights[start : start + BLOCK]
        below = cumulative[block - 1] if block else 0.0
        index = int(np.searchsorted(np.cumsum(inside, dtype=np.float64), target - below, side="right"))
        if index >= len(inside) or inside[index] == 0:  # rounding past the block's last weighted token
            index = int(np.flatnonzero(inside)[-1])
        chosen.append(start + index)
    return chosen


def nucleus(weights: np.ndarray, draws: Sequence[float], top_p: float) -> list[int]:
    """Like `inverse_cdf`, within the most likely tokens that together hold `top_p`
    of the mass. Tokens under e^-30 of the most likely one (weight 1) are left out
    of the sort: together they carry less than V * e^-30 < 2e-8 of the mass."""
    kept = np.flatnonzero(weights > NUCLEUS_FLOOR)
    kept_weights = weights[kept].astype(np.float64)
    order = np.argsort(-kept_weights, kind="stable")
    cumulative = np.cumsum(kept_weights[order])
    cut = int(np.searchsorted(cumulative, top_p * float(weights.sum(dtype=np.float64)))) + 1
    cumulative = cumulative[:cut]
    picks = np.searchsorted(cumulative, np.asarray(draws) * cumulative[-1], side="right")
    return [int(kept[order[min(int(p), cut - 1)]]) for p in picks]


class Sampler(Protocol):
    """What `LlamaModel`'s sample loop asks for each group of candidates that
    share a next-token row (forks with identical histories)."""

    limit: int  # ids at and above it are never drawn

    def pick(
        self, row: np.ndarray, streams: Sequence[np.random.Generator], params: SampleParams
    ) -> tuple[list[int], list[float]]:
        """A token for each candidate (one stream each) and its log-probability at T=1."""
        ...


class HostSampler:
    """Picks candidates' tokens from logits rows in numpy, with buffers of its own.

    `limit` keeps ids at and above it from ever being drawn: a draft whose
    vocabulary is larger than its target's samples only ids the target has."""

    def __init__(self, n_vocab: int) -> None:
        self.limit = n_vocab
        self._scratch = np.empty(n_vocab, np.float32)
        self._weights = np.empty(n_vocab, np.float32)

    def pick(
        self, row: np.ndarray, streams: Sequence[np.random.Generator], params: SampleParams
    ) -> tuple[list[int], list[float]]:
        """A token for each stream's candidate from one next-token row, and each
        token's log-probability at T=1."""
        row = row[: self.limit]
        top, log_z = logsumexp(row, self._scratch)
        if params.temperature == 0:
            token = int(row.argmax())
            return [token] * len(streams), [float(row[token]) - log_z] * len(streams)
        if params.temperature == 1:
            weights = self._scratch[: len(row)]  # exp(row - top), left by the logsumexp
        else:
            weights = self._weights[: len(row)]
            np.subtract(row, top, out=weights)
            weights *= 1 / params.temperature
            np.exp(weights, out=weights)
        draws = [stream.random() for stream in streams]
        chosen = nucleus(weights, draws, params.top_p) if params.top_p < 1 else inverse_cdf(weights, draws)
        return chosen, [float(row[t]) - log_z for t in chosen]
