"""The batch samplers on a few dozen rows: what each mode draws, padding and sharding over ranks, bucketing,
drop_last, epochs, and the evaluation shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdigits.data.samplers import SAMPLERS, EvalBatchSampler, TrainBatchSampler

LABELS = np.array([True] * 4 + [False] * 16)  # 4 positives (rows 0-3), 16 negatives


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "oversample"},
            r"sampler='oversample'; expected one of \('none', 'weighted', 'undersample'\)",
        ),
        ({"mode": "weighted"}, "sampler='weighted' needs binary labels"),
        ({"mode": "undersample", "labels": np.ones(20, bool)}, "needs both positive and negative rows"),
        ({"mode": "weighted", "labels": np.zeros(20, bool)}, "needs both positive and negative rows"),
        ({"bucketing": True}, "^bucketing needs lengths$"),
        ({"rank": 2, "num_replicas": 2}, r"rank 2 not in \[0, 2\)"),
        ({"rank": -1}, r"rank -1 not in \[0, 1\)"),
    ],
)
def test_train_sampler_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainBatchSampler(20, 4, **kwargs)


def test_the_modes():
    assert SAMPLERS == ("none", "weighted", "undersample")
    TrainBatchSampler(20, 4, rank=1, num_replicas=2)  # the last rank is a rank


def test_none_takes_every_row_once_per_epoch():
    s = TrainBatchSampler(20, 6, seed=3)
    assert s.epoch_size() == 20 and len(s) == 4
    batches = s.batches(0)
    assert [len(b) for b in batches] == [6, 6, 6, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(20))
    assert np.concatenate(batches).tolist() != list(range(20))  # shuffled


def test_undersample_takes_all_positives_and_as_many_distinct_negatives():
    s = TrainBatchSampler(20, 4, mode="undersample", labels=LABELS, seed=0)
    assert s.epoch_size() == 8 and len(s) == 2
    idx = s.epoch_indices(0)
    assert sorted(idx[idx < 4].tolist()) == [0, 1, 2, 3]
    neg = idx[idx >= 4]
    assert len(neg) == 4 and len(set(neg.tolist())) == 4
    # re-drawn each epoch
    assert {tuple(sorted(s.epoch_indices(e)[s.epoch_indices(e) >= 4].tolist())) for e in range(5)} != {
        tuple(sorted(neg.tolist()))
    }


def test_undersample_repeats_negatives_only_when_they_are_fewer():
    labels = np.array([True] * 6 + [False] * 2)
    idx = TrainBatchSampler(8, 4, mode="undersample", labels=labels, seed=0).epoch_indices(0)
    assert len(idx) == 12 and sorted(idx[idx < 6].tolist()) == list(range(6))
    assert set(idx[idx >= 6].tolist()) <= {6, 7} and (idx >= 6).sum() == 6


def test_weighted_draws_half_positives_and_distinct_negatives():
    s = TrainBatchSampler(21, 7, mode="weighted", labels=np.array([True] * 4 + [False] * 17), seed=1)
    assert s.epoch_size() == 21 and len(s) == 3
    idx = s.epoch_indices(0)
    assert len(idx) == 21 and (idx < 4).sum() == 10  # n // 2 positives, with replacement
    neg = idx[idx >= 4]
    assert len(neg) == 11 and len(set(neg.tolist())) == 11  # enough negatives: none repeated


def test_weighted_repeats_negatives_when_too_few():
    idx = TrainBatchSampler(10, 5, mode="weighted", labels=np.array([False] * 2 + [True] * 8)).epoch_indices(
        0
    )
    assert (idx < 2).sum() == 5 and set(idx[idx < 2].tolist()) <= {0, 1}


def test_ranks_split_one_order_and_pad_by_wrapping():
    full = TrainBatchSampler(10, 2, seed=4).epoch_indices(0)
    r0, r1, r2 = (TrainBatchSampler(10, 2, seed=4, num_replicas=3, rank=r) for r in range(3))
    assert len(r0) == len(r1) == len(r2) == 2  # ceil(10 / 3) = 4 rows each, 2 batches
    padded = np.concatenate([full, full[:2]])
    for r, s in enumerate((r0, r1, r2)):
        assert np.concatenate(s.batches(0)).tolist() == padded[r::3].tolist()


def test_drop_last_drops_only_a_short_last_batch():
    s = TrainBatchSampler(10, 4, drop_last=True)
    assert len(s) == 2 and [len(b) for b in s.batches(0)] == [4, 4]
    exact = TrainBatchSampler(8, 4, drop_last=True)
    assert len(exact) == 2 and [len(b) for b in exact.batches(0)] == [4, 4]
    assert len(TrainBatchSampler(0, 4, drop_last=True).batches(0)) == 0


def test_bucketing_sorts_chunks_by_length_and_shuffles_the_batches():
    lengths = np.arange(40)[::-1].copy()  # row i has length 39 - i
    s = TrainBatchSampler(40, 4, lengths=lengths, bucketing=True, bucket_batches=5, seed=2)
    batches = s.batches(0)
    assert [len(b) for b in batches] == [4] * 10
    assert sorted(np.concatenate(batches).tolist()) == list(range(40))
    for b in batches:  # each batch: neighbours in length within its chunk of 20 rows
        assert (np.diff(lengths[b]) >= 0).all()
    full = TrainBatchSampler(40, 4, seed=2).epoch_indices(0)
    chunks = [set(full[:20].tolist()), set(full[20:].tolist())]
    assert all(any(set(b.tolist()) <= c for c in chunks) for b in batches)
    plain = [lengths[b].min() for b in batches]
    assert plain != sorted(plain)  # batch order shuffled, not by length
    again = TrainBatchSampler(40, 4, lengths=lengths, bucketing=True, bucket_batches=5, seed=2).batches(0)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]


def test_bucketing_with_drop_last():
    s = TrainBatchSampler(10, 4, lengths=np.arange(10), bucketing=True, drop_last=True)
    assert [len(b) for b in s.batches(0)] == [4, 4]


def test_epochs_advance_by_iteration_and_by_set_epoch():
    s = TrainBatchSampler(12, 5, seed=7)
    first = [b.tolist() for b in s]
    assert s.epoch == 1
    assert [b.dtype for b in s] == [torch.int64] * 3 and s.epoch == 2
    s.set_epoch(0)
    assert [b.tolist() for b in s] == first
    assert [b.tolist() for b in s.batches(1)] != first
    assert [b.tolist() for b in TrainBatchSampler(12, 5, seed=8).batches(0)] != first


@pytest.mark.parametrize(
    ("args", "message"),
    [((10, 4, 2, 2), r"rank 2 not in \[0, 2\)"), ((10, 4, 1, -1), r"rank -1 not in \[0, 1\)")],
)
def test_eval_sampler_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        EvalBatchSampler(*args)
    with pytest.raises(ValueError, match="9 lengths for 10 rows"):
        EvalBatchSampler(10, 4, lengths=np.ones(9))


def test_eval_shards_are_contiguous_with_equal_batch_counts():
    s0, s1 = EvalBatchSampler(11, 4, 2, 0), EvalBatchSampler(11, 4, 2, 1)
    b0, b1 = [b.tolist() for b in s0], [b.tolist() for b in s1]
    assert b0 == [[0, 1, 2], [3, 4, 5]] and b1 == [[6, 7, 8], [9, 10]]
    assert len(s0) == len(s1) == 2  # ceil(6 / 4) batches on every rank
    assert [b.tolist() for b in EvalBatchSampler(8, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in EvalBatchSampler(9, 4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert next(iter(EvalBatchSampler(3, 4))).dtype == torch.int64
    s0.set_epoch(5)
    assert [b.tolist() for b in s0] == b0


def test_eval_sorting_is_stable_and_empty_sets_have_no_batches():
    lengths = np.array([3, 1, 3, 2, 1])
    assert [b.tolist() for b in EvalBatchSampler(5, 5, lengths=lengths)] == [[1, 4, 3, 0, 2]]
    assert len(EvalBatchSampler(0, 4)) == 0 and list(EvalBatchSampler(0, 4)) == []
    assert len(EvalBatchSampler(1, 4, 2, 1)) == 0  # a rank with an empty shard yields nothing


def test_labels_may_be_zeros_and_ones():
    s = TrainBatchSampler(8, 4, mode="undersample", labels=np.array([1, 0, 0, 1, 0, 0, 0, 0]), seed=0)
    idx = s.epoch_indices(0)
    assert sorted(idx[np.isin(idx, [0, 3])].tolist()) == [0, 3]
    assert len(idx) == 4 and set(idx.tolist()) - {0, 3} <= {1, 2, 4, 5, 6, 7}


def test_exactly_enough_negatives_are_drawn_without_repeats():
    undersample = TrainBatchSampler(
        8, 4, mode="undersample", labels=np.array([True] * 4 + [False] * 4), seed=5
    )
    assert sorted(undersample.epoch_indices(0).tolist()) == list(range(8))
    weighted = TrainBatchSampler(8, 4, mode="weighted", labels=np.array([True] * 2 + [False] * 4), seed=5)
    idx = weighted.epoch_indices(0)
    assert sorted(idx[idx >= 2].tolist()) == [2, 3, 4, 5]


def test_the_defaults():
    s = TrainBatchSampler(30, 4)
    assert [b.tolist() for b in s.batches(0)] == [
        b.tolist() for b in TrainBatchSampler(30, 4, seed=0).batches(0)
    ]
    assert len(s) == 8 and sum(len(b) for b in s.batches(0)) == 30  # one rank
    # bucketing sorts chunks of 50 batches: with 2-row batches, rows 101-102 of the epoch order are a chunk
    lengths = np.arange(102)[::-1].copy()
    full = TrainBatchSampler(102, 2, seed=3).epoch_indices(0)
    batches = TrainBatchSampler(102, 2, lengths=lengths, bucketing=True, seed=3).batches(0)
    assert sorted(full[100:].tolist()) in [sorted(b.tolist()) for b in batches]


def test_length_sorting_keeps_equal_lengths_in_their_order():
    lengths = np.arange(300) % 3
    s = EvalBatchSampler(300, 300, lengths=lengths)
    assert next(iter(s)).tolist() == sorted(range(300), key=lambda i: (lengths[i], i))
    s = TrainBatchSampler(300, 10, lengths=lengths, bucketing=True, bucket_batches=30, seed=1)
    order = s.epoch_indices(0)
    position = {int(r): p for p, r in enumerate(order)}
    expected = sorted(order.tolist(), key=lambda r: (lengths[r], position[r]))
    slices = {tuple(expected[i : i + 10]) for i in range(0, 300, 10)}
    assert {tuple(b.tolist()) for b in s.batches(0)} == slices


def test_zero_one_labels_never_draw_a_positive_as_a_negative():
    labels = np.array([1, 1] + [0] * 8)
    s = TrainBatchSampler(10, 5, mode="weighted", labels=labels, seed=0)
    for epoch in range(10):
        assert (s.epoch_indices(epoch) < 2).sum() == 5  # n // 2 positives, the rest negatives only
