"""Re-test a checkpoint on the test split: ``python -m mmdigits.evaluate ckpt_path=...``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from mmdigits.errors import MMDigitsError
from mmdigits.models.loading import load_model_and_data
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.run import metrics_to_floats, write_json

log = logging.getLogger("mmdigits.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint's model on ``cfg.data``'s test split; writes ``metrics.json``."""
    L.seed_everything(cfg.get("seed", 0), workers=True)
    model, datamodule = load_model_and_data(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer)
    datamodule.prepare_data()
    if not datamodule.has_test_labels:
        raise MMDigitsError(f"{cfg.data.dir}: no test labels (match_test.npy), so there is nothing to score")
    trainer.test(model, datamodule=datamodule)
    metrics: dict[str, Any] = metrics_to_floats(trainer.callback_metrics)
    metrics["ckpt_path"] = str(cfg.ckpt_path)
    if cfg.get("robustness", False):
        from mmdigits.analysis.robustness import robustness_report

        metrics["robustness"] = robustness_report(model, datamodule, Path(cfg.paths.output_dir))
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    log.info("test metrics: %s", {k: v for k, v in metrics.items() if k.startswith("test/")})
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@clean_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
