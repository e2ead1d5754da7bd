"""Pairs per second of the training and test steps, measured on the batches themselves (``index`` holds one
entry per pair), logged as ``train/pairs_per_s`` and ``test/pairs_per_s`` and so written to metrics.json."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch import Callback


class PairsPerSecond(Callback):
    """Time from each step's start to its end (data loading excluded), summed over the stage."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._pairs: dict[str, int] = {}
        self._t0 = 0.0

    def _start(self) -> None:
        self._t0 = time.perf_counter()

    def _end(self, stage: str, batch: Any) -> None:
        self._seconds[stage] = self._seconds.get(stage, 0.0) + time.perf_counter() - self._t0
        self._pairs[stage] = self._pairs.get(stage, 0) + len(batch["index"])

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        if self._seconds.get(stage):
            rate = self._pairs[stage] / self._seconds[stage]
            pl_module.log(f"{stage}/pairs_per_s", rate, sync_dist=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self._end("train", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "train")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seconds.pop("test", None)
        self._pairs.pop("test", None)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._end("test", batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "test")
