"""Which rows a decode sends to llama.cpp, planned in pure Python.

A row is one token at one position, carrying the ids of every sequence whose
history it extends. Teacher forcing decodes each pair's tokens after its
parent sequence through a prefix trie: one row per distinct (history, token),
so candidates with a common prefix, and the parent's own undecoded tail,
are decoded once. The plan says which rows to decode, which of them output
logits, and where each asked-for log-probability is read: from a row of this
decode, or from the parent's kept next-token row when nothing precedes it.

`chunks` cuts any list of rows into decodes llama.cpp accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass
class Rows:
    """Rows for one `llama_decode` call or several, in order."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[list[int]] = field(default_factory=list)  # the sequences each row extends
    outputs: list[bool] = field(default_factory=list)  # whether each row gives logits

    def add(self, token: int, position: int, seq_ids: list[int], *, output: bool) -> int:
        self.tokens.append(token)
        self.positions.append(position)
        self.seq_ids.append(seq_ids)
        self.outputs.append(output)
        return len(self.tokens) - 1


class ForcedPair(NamedTuple):
    """Tokens to force after a parent sequence, and what that sequence holds."""

    parent: int  # the parent's sequence id
    cached: int  # how many of the parent's tokens the cache holds
    tail: Sequence[int]  # the parent's tokens after those, not decoded yet
    child: int  # the id of the parent's fork that will hold parent + tokens
    tokens: Sequence[int]


class Read(NamedTuple):
    """Log-probabilities of `ids` from one row go to results[pair][slot : slot + len(ids)]."""

    pair: int
    slot: int
    ids: list[int]


@dataclass
class ForcingPlan:
    rows: Rows = field(default_factory=Rows)
    reads: dict[int, list[Read]] = field(default_factory=dict)  # row -> what is read from it
    keeps: dict[int, int] = field(default_factory=dict)  # row -> sequence id whose next-token row it is
    direct: list[Read] = field(default_factory=list)  # reads of the pair's parent's kept row
    advanced: list[int] = field(default_factory=list)  # parents whose tail the rows decode into them
    child_cached: list[int] = field(default_factory=list)  # per pair: the child's tokens in the cache after


def reads_parent_row(tokens: Sequence[int], next_ids: Sequence[int] | None) -> bool:
    """Whether forcing `tokens` reads the row right after the parent's last token."""
    return bool(tokens) if next_ids is None else not tokens


def plan_forcing(pairs: Sequence[ForcedPair], next_ids: Sequence[int] | None, *, share: bool) -> ForcingPlan:
    """Rows that teacher-force every pair's tokens after its parent.

    Scoring (`next_ids` None) reads each token's log-probability and leaves each
    pair's last token undecoded (only a continued candidate pays for its last
    row); otherwise `next_ids` are read after all tokens, which are all decoded.
    With `share`, pairs of one parent share rows while their histories agree and
    carry the parent's id along its tail, and an empty scored candidate keeps
    the parent's next-token row; without, every pair has rows of its own."""
    scoring = next_ids is None
    plan = ForcingPlan()
    rows = plan.rows
    node_of: dict[tuple[object, int], int] = {}  # (parent node, token) -> row
    for j, (parent, cached, tail, child, tokens) in enumerate(pairs):
        path = [*tail, *tokens]
        n_decode = len(path) - 1 if scoring and tokens else len(path)
        joins = share and bool(tail)
        node: object = ("root", parent) if share else ("root", j)
        trail: list[int] = []
        for depth in range(1, n_decode + 1):
            key = (node, path[depth - 1])
            row = node_of.get(key)
            if row is None:
                ends_tail = joins and depth == len(tail)
                riders = [parent] if joins and depth <= len(tail) else []
                row = node_of[key] = rows.add(path[depth - 1], cached + depth - 1, riders, output=ends_tail)
                if ends_tail:
                    plan.keeps[row] = parent
            rows.seq_ids[row].append(child)
            trail.append(row)
            node = row
        wanted = (
            [Read(j, slot, [t]) for slot, t in enumerate(tokens)] if next_ids is None else [Read(j, 0, list(next_ids))]
        )
        for read in wanted:
            depth = len(tail) + read.slot if scoring else len(path)
            if depth == 0:
                plan.direct.append(read)
            else:
                rows.outputs[trail[depth - 1]] = True
                plan.reads.setdefault(trail[depth - 1], []).append(read)
        if scoring and not tokens and tail:  # an empty candidate is fully cached: keep its row
            rows.outputs[trail[-1]] = True
            plan.keeps.setdefault(trail[-1], child)
        if joins and parent not in plan.advanced:
            plan.advanced.append(parent)
        plan.child_cached.append(cached + n_decode)
    return plan


def chunks(
    outputs: Sequence[bool] | np.ndarray, n_batch: int, max_outputs: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, end, output rows) of consecutive decodes of at most `n_batch` rows
    and `max_outputs` output rows each; output rows count from the first row."""
    flags = np.asarray(outputs, np.int8)
    n = len(flags)
    start = 0
    while start < n:
        end = min(n, start + n_batch)
        out_rows = np.flatnonzero(flags[start:end]) + start
        if len(out_rows) > max_outputs:
            end = int(out_rows[max_outputs])
            out_rows = out_rows[:max_outputs]
        yield start, end, out_rows
        start = end
