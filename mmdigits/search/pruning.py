"""The pruning callback of a search's jobs: ``val/acc`` reported to the trial after each epoch, and training
stopped when the study's pruner says so.

It wraps optuna-integration's ``PyTorchLightningPruningCallback`` (which imports ``lightning.pytorch`` and
works with Lightning 2.6) and changes one thing: where that callback raises ``optuna.TrialPruned`` out of
``fit``, this one sets ``trainer.should_stop``. The run then ends as any run does (its best checkpoint
tested, ``metrics.json`` written with ``"stopped_by": "pruned"``) instead of as a failed job, and the sweeper
tells the trial PRUNED. Under DDP the wrapped callback decides on rank 0 and stops every rank; it needs a
database storage there, as optuna-integration says.

The trial is found through the search's storage: ``storage``, ``study_name`` and ``pruner`` default to the
sweeper's settings in the job's Hydra config; ``trial`` (its number) is set by the sweeper for each job.
With ``trial: null`` (a config composed outside a search) the callback does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import Callback
from optuna_integration import PyTorchLightningPruningCallback

from mmdigits.search.study import open_storage, trial_id

log = logging.getLogger("mmdigits.search")


class OptunaPruning(Callback):
    def __init__(
        self,
        monitor: str = "val/acc",
        trial: int | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        pruner: Any = None,
    ) -> None:
        self.monitor, self.trial = monitor, trial
        self.storage, self.study_name, self.pruner = storage, study_name, pruner
        self.pruned = False  # read by mmdigits.utils.run.stopped_by
        self._trial: optuna.Trial | None = None
        self._inner: PyTorchLightningPruningCallback | None = None

    def _open(self) -> optuna.Trial:
        """The trial, from the storage; unset settings are the sweeper's (the job's Hydra config)."""
        hc = HydraConfig.get() if HydraConfig.initialized() else None
        sweeper = hc.sweeper if hc is not None else {}
        storage_cfg = self.storage or sweeper.get("storage")
        name = self.study_name or sweeper.get("study_name")
        pruner_cfg = self.pruner if self.pruner is not None else sweeper.get("pruner")
        storage = open_storage(storage_cfg, hc.sweep.dir if hc is not None else ".")
        pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        return optuna.trial.Trial(study, trial_id(storage, name, int(self.trial)))  # type: ignore[arg-type]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.trial is not None and self._inner is None:
            self._trial = self._open()
            self._inner = PyTorchLightningPruningCallback(self._trial, self.monitor)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._inner is not None:
            self._inner.on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._inner is None:
            return
        try:
            self._inner.on_validation_end(trainer, pl_module)
        except optuna.TrialPruned:
            self.pruned = trainer.should_stop = True
        else:  # DDP: the wrapped callback stopped every rank itself; rank 0 knows why
            ddp_pruned = self._inner.is_ddp_backend and trainer.should_stop and trainer.is_global_zero
            self.pruned = self.pruned or bool(ddp_pruned and self._trial and self._trial.should_prune())
        if self.pruned:
            log.info("trial %s pruned at epoch %d (%s)", self.trial, pl_module.current_epoch, self.monitor)
