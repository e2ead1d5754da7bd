"""Graceful interruption: SIGTERM (or Ctrl+C) during ``fit`` saves ``checkpoints/last.ckpt`` first.

Lightning turns SIGTERM into a ``SIGTERMException`` (a ``SystemExit`` with status 0) at the next batch
boundary. :class:`CheckpointOnInterrupt` saves a resumable checkpoint from ``on_exception``; the entry
points then exit with :data:`SIGTERM_EXIT_CODE` and a log line saying how to resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("mmdigits.signals")

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM


class CheckpointOnInterrupt(Callback):
    """Save a checkpoint to ``path`` when ``fit`` is stopped by SIGTERM (or Ctrl+C on one process).

    The checkpoint holds the progress up to the last finished batch; ``ckpt_path=last`` resumes from it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.saved: Path | None = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING or not _is_interrupt(exception, trainer.world_size):
            return
        # every rank receives the exception; save_checkpoint is collective and writes on rank 0 only
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved = self.path
        if trainer.is_global_zero:
            log.warning(
                "interrupted at epoch %d, step %d: saved %s",
                trainer.current_epoch,
                trainer.global_step,
                self.path,
            )


def _is_interrupt(exception: BaseException, world_size: int) -> bool:
    # Ctrl+C reaches each rank at its own moment: a collective save could deadlock under DDP
    return isinstance(exception, SIGTERMException) or (
        isinstance(exception, KeyboardInterrupt) and world_size == 1
    )


def is_sigterm(exception: BaseException) -> bool:
    return isinstance(exception, SIGTERMException)
