"""Load a trained model from a checkpoint file, with clear errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mmdigits.errors import CheckpointError
from mmdigits.models.module import OPTIONAL_BUFFERS, MultimodalModule


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``path``; CheckpointError when missing, unreadable or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {first}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not an mmdigits checkpoint (no state_dict/hyper_parameters)")
    return ckpt


def check_resume_checkpoint(path: str | Path, model: MultimodalModule) -> None:
    """Fail early, with one line, when ``path`` cannot resume ``model`` (corrupt, or another model config)."""
    ckpt = read_checkpoint(path)
    if "loops" not in ckpt or "optimizer_states" not in ckpt:
        raise CheckpointError(f"{path}: holds weights only (no training state), so it cannot resume a run")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    problems = [f"missing {k}" for k in expected if k not in found and k not in OPTIONAL_BUFFERS]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k} {found[k]} != {v}" for k, v in expected.items() if k in found and found[k] != v]
    if problems:
        shown = ", ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise CheckpointError(
            f"{path}: weights do not fit this run's model config "
            f"(a checkpoint from a different model config?): {shown}"
        )


def load_checkpoint_model(path: str | Path, map_location: str = "cpu") -> MultimodalModule:
    """Rebuild a ``MultimodalModule`` from ``path`` alone (hyperparameters + weights + buffers)."""
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
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


def load_model_and_data(cfg: DictConfig) -> tuple[MultimodalModule, Any]:
    """``cfg.ckpt_path``'s model and ``cfg.data``'s datamodule, set to the task the model was trained for."""
    model = load_checkpoint_model(cfg.ckpt_path)
    return model, instantiate(cfg.data, task=model.task, _convert_="all")
