"""Checkpoint writing that never leaves a truncated file under the final name."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from mmdigits.utils.io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Serialise to memory, write ``<name>.tmp-*``, fsync, then ``os.replace`` onto the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        os.makedirs(path.parent, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())


class LastCheckpointEveryEpoch(Checkpoint):
    """Write ``last.ckpt`` at the end of every training epoch.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when a top-k checkpoint
    is saved, i.e. when the monitored metric improves; a crash after a few epochs without improvement would
    then replay all of them. Being a ``Checkpoint``, this callback runs after the others (Lightning orders
    checkpoint callbacks last), so the file holds their up-to-date state (early stopping, best model path).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
