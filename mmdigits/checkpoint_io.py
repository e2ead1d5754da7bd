"""Checkpoint writing that never leaves a truncated file under the final name."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

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
