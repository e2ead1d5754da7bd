"""Train, then test the best checkpoint: ``python -m mmdigits.train model=crnn_cnn``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mmdigits import from_experts
from mmdigits.analysis.robustness import missing_modality_accuracy
from mmdigits.errors import MMDigitsError
from mmdigits.models.loading import check_resume_checkpoint, read_checkpoint
from mmdigits.models.pretrained import StartFromExperts
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.io import atomic_save_npy
from mmdigits.utils.run import (
    PREDICTIONS_FILE,
    budget,
    check_validation,
    drop_nonzero_rank_log_files,
    environment,
    hparams_for_logging,
    instantiate_callbacks,
    instantiate_loggers,
    metrics_to_floats,
    resolve_ckpt_path,
    stopped_by,
    write_json,
)
from mmdigits.utils.rundir import claim_run_dir, claimed, config_hash, resume_decision

log = logging.getLogger("mmdigits.train")

# Metrics shown in TensorBoard's HParams tab next to each run's hyperparameters.
HPARAM_METRICS = ("val/acc_best", "test/acc", "test/f1", "test/auroc")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the model described by ``cfg``, test its best checkpoint, write ``metrics.json``.

    Returns the metrics dict (also written to ``<output_dir>/metrics.json``). The run directory is locked
    while the run writes to it (rank 0; the other DDP ranks share it).
    """
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank != 0:  # started by rank 0's trainer, after its claim: the same decision
        return _train(cfg, resume_decision(cfg, output_dir))
    with claimed(cfg, claim_run_dir) as ckpt_path:
        log.info("run directory: %s", output_dir)
        if ckpt_path == "done":
            metrics = json.loads((output_dir / "metrics.json").read_text())
            log.info("skipped: %s finished with this config already (metrics.json)", output_dir)
            return metrics
        return _train(cfg, ckpt_path)


def _train(cfg: DictConfig, ckpt_path: str | None) -> dict[str, Any]:
    start = time.perf_counter()
    check_validation(cfg)
    experts = from_experts.find_or_train_experts(cfg, train)  # experiment=match_from_experts: {} otherwise
    experts_s = time.perf_counter() - start
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    log.info("budget: %s", budget(cfg))

    datamodule = instantiate(cfg.data, _convert_="all")
    try:
        model = instantiate(cfg.model, **from_experts.pretrained_spec(cfg, experts))
    except InstantiationException as err:  # a setting the module refuses (model.pretrained): one line
        if isinstance(err.__cause__, MMDigitsError):
            raise err.__cause__ from None
        raise
    checkpointing = cfg.trainer.get("enable_checkpointing", True)
    callbacks = instantiate_callbacks(cfg.get("callbacks"), checkpointing)
    callbacks += (
        [StartFromExperts()] if model.experts_pending else []
    )  # model.pretrained: copied at fit start
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):  # registers the HParams-tab metrics
            lg.log_hyperparams(hparams_for_logging(cfg), metrics={k: 0.0 for k in HPARAM_METRICS})
        else:
            lg.log_hyperparams(hparams_for_logging(cfg))

    trust = bool(cfg.get("trust_checkpoint", False))
    reason = None  # read right after fit: the test below reloads the Timer's saved time on top of its own
    if cfg.get("train", True):
        ckpt = resolve_ckpt_path(ckpt_path, output_dir)
        if ckpt is not None:
            check_resume_checkpoint(ckpt, model, trust=trust)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=not trust)
        reason = stopped_by(trainer)
        if reason == "max_time":
            log.warning(
                "the wall-clock cap trainer.max_time=%s stopped training after %d of %d epochs: the "
                "learning-rate schedule did not finish, so this is not the recipe's result",
                cfg.trainer.max_time,
                trainer.current_epoch,
                cfg.trainer.max_epochs,
            )
    metrics: dict[str, Any] = metrics_to_floats(trainer.callback_metrics)

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if experts and trainer.is_global_zero and datamodule.val_set is not None:  # where fusing meets composing
        device = from_experts.composition_device(cfg)
        loader = datamodule.val_dataloader()
        metrics["composition_validation"] = from_experts.composition_report(experts, loader, device)
    if cfg.get("test", True) and datamodule.has_test_labels:
        ckpt = best if best and not trainer.fast_dev_run else None
        if ckpt is None:
            log.warning("no best checkpoint; testing the weights in memory")
        else:
            read_checkpoint(ckpt)  # the one choke point for checkpoints, before Lightning reads it
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(metrics_to_floats(trainer.callback_metrics))
        if trainer.is_global_zero and model.test_predictions is not None:
            atomic_save_npy(output_dir / PREDICTIONS_FILE, model.test_predictions.numpy())
        if cfg.get("test_missing_modalities", True) and trainer.is_global_zero:  # the tested weights
            metrics.update(missing_modality_accuracy(model, datamodule.whole_test_dataloader()))
        if experts and trainer.is_global_zero:  # the experts composed, on the same test pairs
            device = from_experts.composition_device(cfg)
            loader = datamodule.test_dataloader()
            metrics["composition"] = from_experts.composition_report(experts, loader, device)
    elif cfg.get("test", True):
        log.warning("data.dir has no test labels (%s): skipping the test stage", model.task.test_label_file)

    metrics.update(
        {
            "run_name": cfg.get("run_name"),
            "pretrained": model.hparams.get("pretrained"),  # the experts it started from
            "best_model_path": best,
            "epochs": trainer.current_epoch,
            "max_epochs": cfg.trainer.max_epochs,
            "stopped_by": reason,
            "global_step": trainer.global_step,
            "wall_time_s": round(time.perf_counter() - start, 2),
            "config_hash": config_hash(cfg),
            "environment": environment(),
        }
    )
    if experts:  # what the experts' runs took is theirs (in their metrics.json), whether trained now or not
        metrics["experts"] = from_experts.record(experts)
        metrics["fusion_wall_time_s"] = round(metrics["wall_time_s"] - experts_s, 2)
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        log.info("metrics: %s", {k: v for k, v in metrics.items() if "/" in k})
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@clean_errors
def main(cfg: DictConfig) -> float | None:
    drop_nonzero_rank_log_files()
    if cfg.get("deprecated"):
        log.warning("%s", cfg.deprecated)
    if cfg.get("print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
