"""Planning decode rows without llama.cpp: the teacher-forcing trie and batch chunks.

The parent sequence 0 holds ten tokens of which the cache has eight: its tail
60, 61 is not decoded yet (as after an accepted candidate). Children 1, 2, 3
are its forks that will hold the parent's tokens plus each candidate."""

from __future__ import annotations

import numpy as np

from engines.rows import ForcedPair, Read, chunks, plan_forcing, reads_parent_row

TAIL = [60, 61]
PAIRS = [
    ForcedPair(parent=0, cached=8, tail=TAIL, child=1, tokens=[70, 71, 72]),
    ForcedPair(parent=0, cached=8, tail=TAIL, child=2, tokens=[70, 80]),
    ForcedPair(parent=0, cached=8, tail=TAIL, child=3, tokens=[]),
]


def test_shared_histories_are_one_row_each_and_the_parent_rides_its_tail() -> None:
    plan = plan_forcing(PAIRS, None, share=True)
    rows = plan.rows
    # One row per distinct (history, token); a scored candidate's last token is left undecoded.
    assert rows.tokens == [60, 61, 70, 71]
    assert rows.positions == [8, 9, 10, 11]
    assert rows.seq_ids == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2], [1]]
    assert rows.outputs == [False, True, True, True]
    assert plan.reads == {
        1: [Read(0, 0, [70]), Read(1, 0, [70])],  # each candidate's first token, after the tail
        2: [Read(0, 1, [71]), Read(1, 1, [80])],
        3: [Read(0, 2, [72])],
    }
    # The tail's last row is the parent's next-token row (the empty candidate shares it).
    assert plan.keeps == {1: 0}
    assert plan.advanced == [0]
    assert plan.direct == []
    assert plan.child_cached == [12, 11, 10]


def test_without_sharing_every_pair_decodes_its_own_rows() -> None:
    plan = plan_forcing(PAIRS, None, share=False)
    rows = plan.rows
    assert rows.tokens == [60, 61, 70, 71, 60, 61, 70, 60, 61]
    assert rows.seq_ids == [[1], [1], [1], [1], [2], [2], [2], [3], [3]]
    assert rows.positions == [8, 9, 10, 11, 8, 9, 10, 8, 9]
    assert plan.reads == {
        1: [Read(0, 0, [70])],
        2: [Read(0, 1, [71])],
        3: [Read(0, 2, [72])],
        5: [Read(1, 0, [70])],
        6: [Read(1, 1, [80])],
    }
    assert plan.keeps == {8: 3}  # the empty candidate keeps its own row; the parent is not advanced
    assert plan.advanced == []
    assert plan.child_cached == [12, 11, 10]


def test_distinct_parents_never_share_rows() -> None:
    pairs = [ForcedPair(0, 8, [60], 1, [70, 71]), ForcedPair(4, 8, [60], 5, [70, 71])]
    plan = plan_forcing(pairs, None, share=True)
    assert plan.rows.tokens == [60, 70, 60, 70]
    assert plan.rows.seq_ids == [[0, 1], [1], [4, 5], [5]]
    assert plan.advanced == [0, 4]


def test_next_ids_are_read_after_all_tokens_and_a_cached_parent_gives_its_kept_row() -> None:
    pairs = [ForcedPair(5, 4, [], 6, [1, 2]), ForcedPair(5, 4, [], 7, [])]
    plan = plan_forcing(pairs, [9, 8], share=True)
    assert plan.rows.tokens == [1, 2]  # every token decoded: the row after the last is read
    assert plan.rows.outputs == [False, True]
    assert plan.reads == {1: [Read(0, 0, [9, 8])]}
    assert plan.direct == [Read(1, 0, [9, 8])]  # nothing to decode: the parent's kept row
    assert plan.keeps == {}
    assert plan.child_cached == [6, 4]


def test_scoring_after_a_fully_cached_parent_reads_its_first_token_from_the_kept_row() -> None:
    plan = plan_forcing([ForcedPair(5, 4, [], 6, [1, 2, 3])], None, share=True)
    assert plan.direct == [Read(0, 0, [1])]
    assert plan.reads == {0: [Read(0, 1, [2])], 1: [Read(0, 2, [3])]}
    assert plan.rows.tokens == [1, 2]
    assert plan.child_cached == [6]


def test_which_reads_need_the_row_right_after_the_parent() -> None:
    assert reads_parent_row([1, 2], None)  # scoring: the first token's log-probability
    assert not reads_parent_row([], None)  # scoring nothing reads nothing
    assert reads_parent_row([], [9])  # next ids right after the parent
    assert not reads_parent_row([1], [9])  # next ids after the tokens


def test_chunks_respect_n_batch_and_the_output_cap() -> None:
    def as_lists(*args):
        return [(start, end, rows.tolist()) for start, end, rows in chunks(*args)]

    assert as_lists([0, 1, 1, 0, 1, 0, 0, 1], 3, 2) == [(0, 3, [1, 2]), (3, 6, [4]), (6, 8, [7])]
    # Too many output rows: the chunk ends before the first one over the cap.
    assert as_lists([1, 1, 1, 1, 1], 8, 2) == [(0, 2, [0, 1]), (2, 4, [2, 3]), (4, 5, [4])]
    assert as_lists(np.zeros(0, np.int8), 4, 2) == []
