"""Teacher forcing on a LlamaModel: the log-probabilities of given tokens after
cached sequences, decoded as `engines.rows.plan_forcing` plans the rows.

A mixin of `engines.llama.LlamaModel`, kept apart because it is its own kind
of work (planned rows, reads, kept rows); it keeps the same cache invariants
through the model's sequence operations, declared below for type checking.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import numpy as np

from engines import _native as N
from engines.base import ModelUsage, Scored, Seq, StopFn, timed
from engines.rows import ForcedPair, plan_forcing, reads_parent_row
from engines.sampling import logsumexp

if TYPE_CHECKING:
    from engines.llama import LlamaSeq


class TeacherForcing:
    # Provided by LlamaModel and GGUFModel.
    if TYPE_CHECKING:
        _lock: threading.RLock
        _native: N.NativeContext
        _scratch: np.ndarray
        usage: ModelUsage
        share_histories: bool
        hidden_states: bool
        _check_seq: Callable[[object], LlamaSeq]
        _checked_tokens: Callable[[Sequence[int]], list[int]]
        _check_room: Callable[[int, str], None]
        _reserve: Callable[[int], None]
        _refeed: Callable[[LlamaSeq, ModelUsage], None]
        _fork: Callable[[LlamaSeq, ModelUsage], LlamaSeq]
        _drop: Callable[[LlamaSeq], None]
        _forget: Callable[[LlamaSeq, int, ModelUsage], None]
        _next_row: Callable[[LlamaSeq], np.ndarray]
        _timed: Callable[[ModelUsage | None], AbstractContextManager[None]]

    def score(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        *,
        should_stop: StopFn | None = None,
    ) -> list[Scored]:
        with self._lock, timed(self.usage):
            logprobs, children, hidden = self._teacher_force(pairs, None, self.usage, should_stop, self.hidden_states)
            return [Scored(list(lp), child, state) for lp, child, state in zip(logprobs, children, hidden)]

    def next_token_logprobs(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        token_ids: Sequence[int],
        *,
        usage: ModelUsage | None = None,
        should_stop: StopFn | None = None,
    ) -> tuple[np.ndarray, list[LlamaSeq]]:
        """Log-probabilities (T=1) of `token_ids` right after each seq + tokens.

        Returns an array (len(pairs), len(token_ids)) and the extended sequences
        (fully cached; the caller owns them). `usage` charges another record, as
        in `start` (a reward model running on this model keeps its own accounts).
        """
        with self._lock, self._timed(usage):
            ids = self._checked_tokens(token_ids)
            results, children, _ = self._teacher_force(pairs, ids, usage or self.usage, should_stop)
            return (np.stack(results) if results else np.empty((0, len(ids)))), children

    def _teacher_force(
        self,
        pairs: Sequence[tuple[Seq, Sequence[int]]],
        next_ids: list[int] | None,
        usage: ModelUsage,
        should_stop: StopFn | None,
        want_hidden: bool = False,
    ) -> tuple[list[np.ndarray], list[LlamaSeq], list[np.ndarray | None]]:
        """Decode each pair's tokens after its sequence, as `engines.rows.plan_forcing`
        plans the rows, and read log-probabilities: each token's when scoring
        (`next_ids` None), else those of `next_ids` after all tokens. With
        `want_hidden`, also each pair's final hidden state at the row that
        predicts its last token (None for an empty pair, or when that row is a
        parent's kept row from a decode without hidden states)."""
        checked = []
        for seq, cand in pairs:
            parent = self._check_seq(seq)
            ids = self._checked_tokens(cand)
            self._check_room(parent.n_tokens + len(ids), "scoring a candidate")
            checked.append((parent, ids))
        self._reserve(len(checked))
        # A read right after a parent comes from its kept row; re-feed one token where it is gone.
        for parent, cand in checked:
            if reads_parent_row(cand, next_ids) and parent._n_cached == parent.n_tokens and parent._logits is None:
                self._refeed(parent, usage)
        parent_cached = {id(p): p._n_cached for p, _ in checked}
        children: list[LlamaSeq] = []
        joined: list[LlamaSeq] = []
        try:
            children = [self._fork(parent, usage) for parent, _ in checked]
            plan = plan_forcing(
                [
                    ForcedPair(parent._id, parent._n_cached, parent._tokens[parent._n_cached :], child._id, cand)
                    for (parent, cand), child in zip(checked, children)
                ],
                next_ids,
                share=self.share_histories,
            )
            by_id = {seq._id: seq for seq in children} | {parent._id: parent for parent, _ in checked}
            joined = [by_id[i] for i in plan.advanced]
            results = [np.empty(len(cand) if next_ids is None else len(next_ids), np.float64) for _, cand in checked]
            hidden: list[np.ndarray | None] = [None] * len(checked)
            last_slot = [len(cand) - 1 for _, cand in checked]
            scratch = self._scratch

            def read(out: N.Decoded) -> None:
                for i, (row_index, row) in enumerate(zip(out.rows.tolist(), out.logits)):
                    if row_index in plan.reads:
                        _, log_z = logsumexp(row, scratch)
                        for j, slot, ids in plan.reads[row_index]:
                            results[j][slot : slot + len(ids)] = row[ids] - log_z
                            if out.hidden is not None and slot == last_slot[j]:
                                hidden[j] = out.hidden[i].copy()
                    if row_index in plan.keeps:
                        kept = by_id[plan.keeps[row_index]]
                        kept._logits = row.copy()
                        kept._hidden = None if out.hidden is None else out.hidden[i].copy()

            for j, slot, ids in plan.direct:
                parent = checked[j][0]
                row = self._next_row(parent)
                _, log_z = logsumexp(row, scratch)
                results[j][slot : slot + len(ids)] = row[ids] - log_z
                if want_hidden and slot == last_slot[j]:
                    hidden[j] = parent._hidden
            self._native.decode_rows(
                plan.rows, usage, prefill=True, consume=read, should_stop=should_stop, hidden=want_hidden
            )
        except BaseException:
            for child in children:
                self._drop(child)
            for parent in joined:
                self._forget(parent, parent_cached[id(parent)], usage)
                parent._logits = None
            raise
        for parent in joined:
            parent._n_cached = parent.n_tokens
        for (parent, cand), child, n_cached in zip(checked, children, plan.child_cached):
            child._tokens.extend(cand)
            child._n_cached = n_cached
            if cand:
                child._logits = None
            elif child._logits is None:
                child._logits = parent._logits
                child._hidden = parent._hidden
        return results, children, hidden
