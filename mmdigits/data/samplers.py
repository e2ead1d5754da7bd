"""Batch samplers yielding int64 index tensors: shuffled / length-bucketed / class-balanced, seeded per epoch
and DDP-aware (each rank gets a distinct shard with the same number of batches)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

SAMPLERS = ("none", "weighted", "undersample")


class TrainBatchSampler(Sampler[torch.Tensor]):
    """Per-epoch batches of row indices.

    mode ``none``: every row once per epoch; ``weighted``: an epoch of ``n`` rows, half drawn (with
    replacement) from the positives and half from the negatives (~50% positives per batch);
    ``undersample``: all positives plus an equal number of negatives drawn without replacement, re-drawn
    each epoch.
    ``bucketing``: shuffle, sort chunks of ``bucket_batches`` batches by length, cut into batches, shuffle the
    batch order. The order depends only on (seed, epoch, rank); ``set_epoch`` is called by Lightning, and the
    epoch also advances by one after each iteration so plain loops see fresh orders.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        mode: str = "none",
        labels: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        bucketing: bool = False,
        bucket_batches: int = 50,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if mode not in SAMPLERS:
            raise ValueError(f"sampler={mode!r}; expected one of {SAMPLERS}")
        if mode != "none":
            if labels is None:
                raise ValueError(f"sampler={mode!r} needs binary labels")
            labels = np.asarray(labels, bool)
            if labels.all() or not labels.any():
                raise ValueError(f"sampler={mode!r} needs both positive and negative rows")
        if bucketing and lengths is None:
            raise ValueError("bucketing needs lengths")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.n, self.batch_size, self.mode = int(n), int(batch_size), mode
        self.labels = labels
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucketing, self.bucket_batches, self.drop_last = bucketing, bucket_batches, drop_last
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0
        if labels is not None:
            self._pos, self._neg = np.flatnonzero(labels), np.flatnonzero(~labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_size(self) -> int:
        """Rows per epoch over all ranks."""
        return 2 * len(self._pos) if self.mode == "undersample" else self.n

    def _rows_per_rank(self) -> int:
        return math.ceil(self.epoch_size() / self.num_replicas)

    def __len__(self) -> int:
        m = self._rows_per_rank()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The epoch's rows in order, identical on all ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.mode == "none":
            return rng.permutation(self.n)
        if self.mode == "undersample":
            neg = rng.choice(self._neg, size=len(self._pos), replace=len(self._neg) < len(self._pos))
            return rng.permutation(np.concatenate([self._pos, neg]))
        half = self.n // 2
        pos = rng.choice(self._pos, size=half, replace=True)
        neg_n = self.n - half
        neg = rng.choice(self._neg, size=neg_n, replace=len(self._neg) < neg_n)
        return rng.permutation(np.concatenate([pos, neg]))

    def batches(self, epoch: int) -> list[np.ndarray]:
        idx = self.epoch_indices(epoch)
        total = self._rows_per_rank() * self.num_replicas
        if total > len(idx):  # pad by wrapping so every rank gets the same number of rows
            idx = np.concatenate([idx, idx[: total - len(idx)]])
        idx = idx[self.rank :: self.num_replicas]
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        bs = self.batch_size
        if self.bucketing:
            assert self.lengths is not None
            chunk = bs * self.bucket_batches
            parts = [idx[i : i + chunk] for i in range(0, len(idx), chunk)]
            idx = np.concatenate([p[np.argsort(self.lengths[p], kind="stable")] for p in parts])
        out = [idx[i : i + bs] for i in range(0, len(idx), bs)]
        if self.drop_last and out and len(out[-1]) < bs:
            out.pop()
        if self.bucketing:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        self.epoch += 1
        for b in self.batches(epoch):
            yield torch.from_numpy(np.ascontiguousarray(b, dtype=np.int64))


class EvalBatchSampler(Sampler[torch.Tensor]):
    """A contiguous shard of rows per rank; every rank gets the same batch count.

    Rows come in their original order, or sorted by ``lengths`` (shortest first) so that each batch pads
    to nearly its own length: inference on length-sorted batches does about half the audio work. Batches
    carry ``index``, which puts outputs back in row order.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: np.ndarray | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} rows")
        self.n, self.batch_size, self.num_replicas, self.rank = int(n), int(batch_size), num_replicas, rank
        shards = np.array_split(np.arange(self.n, dtype=np.int64), num_replicas)
        self.shard = shards[rank]
        if lengths is not None:
            self.shard = self.shard[np.argsort(np.asarray(lengths)[self.shard], kind="stable")]
        n_batches = math.ceil(max(len(s) for s in shards) / batch_size) if self.n else 0
        self._batches = [b for b in np.array_split(self.shard, n_batches) if len(b)] if n_batches else []

    def set_epoch(self, epoch: int) -> None:  # order never changes
        pass

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for b in self._batches:
            yield torch.from_numpy(b)
