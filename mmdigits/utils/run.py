"""Small helpers the entry points share."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, Timer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from mmdigits.errors import CheckpointError, MMDigitsError
from mmdigits.utils.checkpoint_io import LastCheckpointEveryEpoch
from mmdigits.utils.io import atomic_write_json
from mmdigits.utils.signals import CheckpointOnInterrupt

log = logging.getLogger("mmdigits.train")
# what makes a run resumable (conf/callbacks/default.yaml): name in conf/callbacks -> class
RESUME_CALLBACKS = {
    "last_checkpoint": LastCheckpointEveryEpoch,
    "checkpoint_on_interrupt": CheckpointOnInterrupt,
}


def instantiate_callbacks(cfg: DictConfig | None, checkpointing: bool = True) -> list[Callback]:
    """The callbacks of ``cfg``; without ``checkpointing`` (trainer.enable_checkpointing=false) the ones that
    write checkpoints are left out, as Lightning refuses them."""
    callbacks = [instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]
    missing = [
        name for name, kind in RESUME_CALLBACKS.items() if not any(isinstance(c, kind) for c in callbacks)
    ]
    if checkpointing and missing:
        log.warning(
            "these callbacks lack %s: this run cannot be resumed after a crash or a SIGTERM "
            "(callbacks=default has them; add a choice to it, e.g. 'callbacks=[default,ema]')",
            ", ".join(missing),
        )
    return [c for c in callbacks if checkpointing or not isinstance(c, Checkpoint)]


def ready_datamodule(data: DictConfig, stages: tuple[str, ...] = ("fit",)) -> Any:
    """The datamodule of a ``data`` config, its data prepared (built when missing) and ``stages`` set up."""
    dm = instantiate(data, _convert_="all")
    dm.prepare_data()
    for stage in stages:
        dm.setup(stage)
    return dm


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return [instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def drop_nonzero_rank_log_files() -> None:
    """Under DDP, Lightning re-launches the command per rank with ``hydra.job.name=train_ddp_process_<rank>``,
    so Hydra opens a second log file in the run directory. Only rank 0 writes files: close and remove it."""
    if rank_zero_only.rank == 0:
        return
    for path in close_log_files(lambda path: True):
        if "_ddp_process_" in path.name:
            path.unlink(missing_ok=True)


def close_log_files(where: Callable[[Path], bool]) -> list[Path]:
    """Close and remove the root logger's file handlers whose file ``where`` accepts; their files."""
    root = logging.getLogger()
    closed = []
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and where(Path(handler.baseFilename)):
            root.removeHandler(handler)
            handler.close()
            closed.append(Path(handler.baseFilename))
    return closed


def _choice(group: str) -> str | None:
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # HydraConfig not set (train() called outside @hydra.main)
        return None


def hparams_for_logging(cfg: DictConfig) -> dict[str, Any]:
    """A flat, human-sized set of hyperparameters for TensorBoard's HParams tab."""
    model = cfg.model
    hp = {
        "run": cfg.get("run_name"),
        "task": cfg.data.task,
        "audio_encoder": _choice("audio_encoder"),
        "image_encoder": _choice("image_encoder"),
        "fusion": _choice("fusion"),
        "experiment": _choice("experiment"),
        "seed": cfg.get("seed"),
        "lr": model.optimizer.get("lr"),
        "weight_decay": model.optimizer.get("weight_decay"),
        "batch_size": cfg.data.batch_size,
        "sampler": cfg.data.sampler,
        "bucketing": cfg.data.bucketing,
        "aux_digit_weight": model.aux_digit_weight,
        "balance_weight": model.balance_weight,
        "modality_dropout": model.modality_dropout,
        "precision": str(cfg.trainer.precision),
        "max_epochs": cfg.trainer.max_epochs,
    }
    return {k: ("none" if v is None else v) for k, v in hp.items()}


def metrics_to_floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        value = float(v.item() if isinstance(v, torch.Tensor) else v)
        out[k] = value if math.isfinite(value) else None
    return out


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` means ``<run dir>/checkpoints/last.ckpt``; any other value must be an existing file."""
    if ckpt_path in (None, ""):
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = (
            " (resume inside the interrupted run's directory: hydra.run.dir=<that dir>)"
            if ckpt_path == "last"
            else ""
        )
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    return str(path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=str)))


def budget(cfg: DictConfig) -> str:
    """The run's training budget in words (logged when the run starts)."""
    parts = [f"{cfg.trainer.max_epochs} epochs (trainer.max_epochs)"]
    stopping = (cfg.get("callbacks") or {}).get("early_stopping")
    if stopping:
        parts.append(f"early stopping after {stopping.patience} epochs without a better {stopping.monitor}")
    if cfg.trainer.get("max_time"):
        parts.append(f"wall-clock cap {cfg.trainer.max_time} (trainer.max_time; recorded if it fires)")
    return "; ".join(parts)


def stopped_by(trainer: Any) -> str:
    """Why fit ended: ``max_epochs``, ``early_stopping``, ``max_time`` (wall-clock cap), ``interrupted`` or
    ``pruned`` (a search's pruner stopped the trial: a callback with ``pruned`` set)."""
    if trainer.interrupted:
        return "interrupted"
    if any(getattr(cb, "pruned", False) is True for cb in trainer.callbacks):
        return "pruned"
    for cb in trainer.callbacks:
        if isinstance(cb, Timer) and (cb.time_remaining("train") or 1.0) <= 0:
            return "max_time"
        if isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0:
            return "early_stopping"
    return "max_epochs"


def check_validation(cfg: DictConfig) -> None:
    """Callbacks that watch a validation metric need a validation split."""
    callbacks = [c for c in (cfg.get("callbacks") or {}).values() if c]
    watching = sorted({str(c.monitor) for c in callbacks if str(c.get("monitor") or "").startswith("val/")})
    if cfg.get("train", True) and cfg.data.get("val_fraction", 0.1) <= 0 and watching:
        raise MMDigitsError(
            f"data.val_fraction={cfg.data.val_fraction} leaves no validation split, but callbacks watch "
            f"{', '.join(watching)}; keep a validation split, or pass callbacks=none"
        )


PREDICTIONS_FILE = "test_predictions.npy"  # (pairs, 4): index, target, decision, probability


def _commit() -> str | None:
    """The source's git commit (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Where a run ran: machine, commit and the versions of the libraries its figures depend on."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "commit": _commit(),
        "python": platform.python_version(),
        **{name: ver(name) for name in ("torch", "lightning", "torchmetrics", "numpy", "hydra-core")},
        "cpu": cpu,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
