"""The learning-rate schedule, and the training budget a one-cycle schedule is fixed to."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from torch.optim import Optimizer

from mmdigits.errors import MMDigitsError

log = logging.getLogger(__name__)


def spans_max_epochs(sched_cfg: dict[str, Any] | None) -> bool:
    """True for a one-cycle schedule without an explicit ``total_steps``: it spans trainer.max_epochs."""
    return (
        bool(sched_cfg)
        and str(sched_cfg.get("_target_", "")).endswith("OneCycleLR")
        and ("total_steps" not in sched_cfg)
    )


def build_scheduler(
    sched_cfg: dict[str, Any], optimizer: Optimizer, stepping_batches: float
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry; a one-cycle schedule spans all ``stepping_batches`` steps."""
    sched_cfg = dict(sched_cfg)
    interval = sched_cfg.pop("interval", "epoch")
    if spans_max_epochs(sched_cfg):
        sched_cfg["total_steps"] = max(1, int(stepping_batches))
    scheduler = instantiate(sched_cfg)(optimizer=optimizer)
    return {"scheduler": scheduler, "interval": interval, "monitor": "val/acc"}


def check_resume_budget(ckpt_path: str | None, started: int | None, max_epochs: int) -> None:
    """Resuming a run whose schedule spans ``started`` epochs: more epochs would run the restored schedule out
    of steps mid-run (refused, with the fix); fewer leave it unfinished (a warning)."""
    if started is None or started == max_epochs:
        return
    if max_epochs > started:
        raise MMDigitsError(
            f"{ckpt_path}: its run was started with trainer.max_epochs={started}, and its learning-rate "
            f"schedule spans exactly that budget: resume with trainer.max_epochs={started}, or start a new "
            f"run for {max_epochs} epochs"
        )
    log.warning(
        "resuming a run started with trainer.max_epochs=%d for %d epochs: its learning-rate schedule will "
        "not finish",
        started,
        max_epochs,
    )
