"""Train, then test the best checkpoint: ``python -m mmdigits.train model=crnn_cnn``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from mmdigits.models.loading import check_resume_checkpoint
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.run import (
    drop_nonzero_rank_log_files,
    hparams_for_logging,
    instantiate_callbacks,
    instantiate_loggers,
    metrics_to_floats,
    reliability_callbacks,
    resolve_ckpt_path,
    write_json,
)

log = logging.getLogger("mmdigits.train")

# Metrics shown in TensorBoard's HParams tab next to each run's hyperparameters.
HPARAM_METRICS = ("val/acc_best", "test/acc", "test/f1", "test/auroc")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the model described by ``cfg``, test its best checkpoint, write ``metrics.json``.

    Returns the metrics dict (also written to ``<output_dir>/metrics.json``).
    """
    start = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model)
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + reliability_callbacks(cfg, output_dir)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):  # registers the HParams-tab metrics
            lg.log_hyperparams(hparams_for_logging(cfg), metrics={k: 0.0 for k in HPARAM_METRICS})
        else:
            lg.log_hyperparams(hparams_for_logging(cfg))

    if cfg.get("train", True):
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
        if ckpt_path is not None:
            check_resume_checkpoint(ckpt_path, model)
        # our own checkpoints hold OmegaConf hparams, which the weights-only unpickler refuses
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    metrics = metrics_to_floats(trainer.callback_metrics)

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if cfg.get("test", True) and datamodule.has_test_labels:
        ckpt = best if best and not trainer.fast_dev_run else None
        if ckpt is None:
            log.warning("no best checkpoint; testing the weights in memory")
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
        metrics.update(metrics_to_floats(trainer.callback_metrics))
    elif cfg.get("test", True):
        log.warning("data.dir has no test labels (match_test.npy): skipping the test stage")

    metrics.update(
        {
            "best_model_path": best,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "wall_time_s": round(time.perf_counter() - start, 2),
        }
    )
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        log.info("metrics: %s", {k: v for k, v in metrics.items() if "/" in k})
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@clean_errors
def main(cfg: DictConfig) -> float | None:
    drop_nonzero_rank_log_files()
    log.info("run directory: %s", HydraConfig.get().runtime.output_dir)
    if cfg.get("print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
