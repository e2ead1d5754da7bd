"""Re-test a checkpoint on the test split: ``python -m mmdigits.evaluate ckpt_path=...``.

``ckpt_path=[a.ckpt,b.ckpt,...]`` tests an ensemble: the mean of the members' probabilities per pair.
``split=val`` scores on the validation part the checkpoints' runs held out instead (``val/`` metrics), given
the runs' own data settings: an ensemble, or any other choice, can then be made without the test split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmdigits.errors import MMDigitsError
from mmdigits.models.ensemble import check_validation_part, load_members_and_data, score_ensemble
from mmdigits.models.loading import single_checkpoint_path
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.io import atomic_save_npy, atomic_write_json
from mmdigits.utils.run import PREDICTIONS_FILE, environment, metrics_to_floats, write_json
from mmdigits.utils.rundir import RUN_FILE, claim_output_dir, claimed

log = logging.getLogger("mmdigits.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint's model (or the ensemble of a list of checkpoints) on ``cfg.data``'s test split,
    or with ``split=val`` on the validation part its runs held out; writes ``metrics.json``."""
    start = time.perf_counter()
    L.seed_everything(cfg.get("seed", 0), workers=True)
    split = cfg.get("split", "test")
    if split not in ("test", "val"):
        raise MMDigitsError(
            f"split={split}: evaluate scores split=test, or split=val (the runs' validation part)"
        )
    for option, shown in (("robustness", "+robustness=true"), ("calibrate", "calibrate=true")):
        if cfg.get(option, False):  # refused before any member is loaded
            single_checkpoint_path(cfg.ckpt_path, shown)
            if split != "test":
                raise MMDigitsError(f"{shown} scores the test split; leave out split={split}")
    paths, models, datamodule = load_members_and_data(cfg)
    model = models[0]
    trainer: L.Trainer = instantiate(cfg.trainer)
    datamodule.prepare_data()
    if split == "val":
        check_validation_part(cfg.data, paths)
        datamodule.setup("fit")
        metrics = score_ensemble(trainer, models, datamodule.val_dataloader(), prefix="val/")[0]
        if len(models) == 1:
            del metrics["val/member_acc"]
    else:
        metrics = scored_on_test(cfg, trainer, models, datamodule)
    metrics["ckpt_path"] = paths if len(paths) > 1 else paths[0]
    metrics["environment"] = environment()  # where it was scored
    if cfg.get("robustness", False):
        from mmdigits.analysis.robustness import robustness_report

        metrics["robustness"] = robustness_report(model, datamodule, Path(cfg.paths.output_dir))
    if cfg.get("calibrate", False):  # temperature scaling fitted on the model's validation part
        from mmdigits.models.calibration import calibration_report

        metrics["calibration"] = calibration_report(model, datamodule)
        log.info("calibration: %s", metrics["calibration"])
    if split == "test":
        record_data(cfg, model)
    metrics["wall_time_s"] = round(time.perf_counter() - start, 2)  # an ensemble's: its members' runs apart
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    log.info("%s metrics: %s", split, {k: v for k, v in metrics.items() if k.startswith(f"{split}/")})
    return metrics


def scored_on_test(cfg: DictConfig, trainer: L.Trainer, models: list[Any], datamodule: Any) -> dict[str, Any]:
    """The test metrics of one model (its test stage) or of an ensemble; their predictions are saved."""
    if not datamodule.has_test_labels:
        raise MMDigitsError(f"{cfg.data.dir}: no test labels (match_test.npy), so there is nothing to score")
    out = Path(cfg.paths.output_dir) / PREDICTIONS_FILE
    if len(models) > 1:
        metrics, rows = score_ensemble(trainer, models, datamodule.test_dataloader())
        atomic_save_npy(out, rows.numpy())
        return metrics
    trainer.test(models[0], datamodule=datamodule)
    if models[0].test_predictions is not None:
        atomic_save_npy(out, models[0].test_predictions.numpy())
    return metrics_to_floats(trainer.callback_metrics)


def record_data(cfg: DictConfig, model: Any) -> None:
    """``run.json``: the resolved data settings it was scored on (the task: the model's), which readers of the
    directory take as plain data, as they take a training run's (the report's errors by speaker)."""
    data = {**OmegaConf.to_container(cfg.data, resolve=True), "task": model.task.name}
    atomic_write_json(Path(cfg.paths.output_dir) / RUN_FILE, {"data": data})


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@clean_errors
def main(cfg: DictConfig) -> None:
    with claimed(cfg, claim_output_dir):
        evaluate(cfg)


if __name__ == "__main__":
    main()
