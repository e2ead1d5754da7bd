"""Load a trained model from a checkpoint file, with clear errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from mmdigits.errors import CheckpointError
from mmdigits.models.module import MultimodalModule


def load_checkpoint_model(path: str | Path, map_location: str = "cpu") -> MultimodalModule:
    """Rebuild a ``MultimodalModule`` from ``path`` alone (hyperparameters + weights + buffers)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not an mmdigits checkpoint (no state_dict/hyper_parameters)")
    try:
        model = MultimodalModule(**ckpt["hyper_parameters"])
    except Exception as err:  # hydra/instantiation errors for unknown targets or bad kwargs
        raise CheckpointError(f"{path}: its model config cannot be built here: {err}") from err
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{path}: weights do not fit the model config stored with them "
            f"(a checkpoint from a different model config?): {first}"
        ) from err
    model.eval()
    return model
