"""Write the challenge's submission file: ``python -m mmdigits.predict ckpt_path=... data.dir=...``.

``result.npy`` holds one boolean per test pair (match task) or one digit per pair (digit tasks),
in the order of ``written_test.npy``/``spoken_test.npy``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mmdigits.models.loading import load_model_and_data
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.io import atomic_save_npy

log = logging.getLogger("mmdigits.predict")


def predict(cfg: DictConfig) -> np.ndarray:
    """Predict every test pair of ``cfg.data``; saves and returns the result array."""
    model, datamodule = load_model_and_data(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer)
    start = time.perf_counter()
    outputs = trainer.predict(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    index = torch.cat([o["index"] for o in outputs])
    proba = torch.cat([o["proba"] for o in outputs])
    proba = proba[torch.argsort(index)]
    result = (proba > 0.5).numpy() if model.task == "match" else proba.argmax(-1).numpy()
    out = Path(cfg.output)
    atomic_save_npy(out, result)
    log.info(
        "wrote %s: %d predictions in %.2f s (%.0f pairs/s)", out, len(result), seconds, len(result) / seconds
    )
    if model.task == "match":
        log.info("predicted match rate: %.4f", float(result.mean()))
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@clean_errors
def main(cfg: DictConfig) -> None:
    if cfg.get("image") or cfg.get("audio"):
        from mmdigits.single import predict_single

        predict_single(cfg)
        return
    predict(cfg)


if __name__ == "__main__":
    main()
