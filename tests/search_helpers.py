"""Lightning callbacks that the search tests add to a search's jobs (``+callbacks.<name>._target_=...``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import optuna
from lightning.pytorch import Callback
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend


class KillInThirdRun(Callback):
    """SIGKILLs its own process (nothing is cleaned up, nothing is told to Optuna) at the start of the second
    epoch of the first run that starts after two runs of its sweep finished; once (``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finished = list(Path(trainer.default_root_dir).parent.glob("*/metrics.json"))
        if trainer.current_epoch >= 1 and len(finished) >= 2 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class WaitForTrials(Callback):
    """Holds a run until the study in the journal ``storage`` has ``trials`` trials (at most ``timeout`` s):
    several workers started together each hold a trial before any of them trains."""

    def __init__(self, storage: str, trials: int = 2, timeout: float = 180.0) -> None:
        self.storage, self.trials, self.timeout = storage, trials, timeout

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        storage = JournalStorage(JournalFileBackend(self.storage))
        deadline = time.monotonic() + self.timeout
        while len(optuna.load_study(study_name=None, storage=storage).trials) < self.trials:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.storage}: fewer than {self.trials} trials after {self.timeout} s")
            time.sleep(0.2)
