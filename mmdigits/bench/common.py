"""What the benchmarks share: configs composed like the commands', quiet trainers and logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mmdigits.utils.config import compose_config


def compose(overrides: list[str], output_dir: str | Path | None = None) -> DictConfig:
    return compose_config("train", overrides, output_dir)


def quiet_trainer(**kw: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **kw,
    )


def quiet_logging() -> None:
    """Lightning and mmdigits log errors only. Changes the process's logging: call it from ``__main__``."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mmdigits"):
        logging.getLogger(name).setLevel(logging.ERROR)
