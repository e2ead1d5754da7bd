"""Per-batch re-seeding, so that a run resumed from an epoch-end checkpoint replays exactly.

Lightning's checkpoints do not hold the global torch/numpy/python RNG states, and a resumed run consumes
random numbers differently before training restarts (sanity check, data loader iterators, which draw a
base seed from the global generator when they are created). Re-seeding every RNG from
``(seed, epoch, batch, rank)`` just before each training batch makes the random numbers a step uses
(dropout masks, augmentations, modality dropout) independent of how the process got there.
The batch order is seeded the same way by the sampler itself (see ``mmdigits/data/samplers.py``).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback


def derived_seed(*keys: int) -> int:
    """A 32-bit seed derived from integer ``keys`` (distinct for every combination)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device


class BatchSeed(Callback):
    """Seed python, numpy and torch from ``(seed, epoch, batch, rank)`` before each training batch."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_all(derived_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))
