"""The LightningModule's prior correction for balanced sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mmdigits.data.datamodule import MMDigitsDataModule
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.train import train
from tests.hydra_utils import compose_cfg


def test_balanced_sampler_prior_is_corrected_in_eval(tmp_path, tiny_dataset_dir):
    cfg = compose_cfg(
        "train",
        [
            f"data.dir={tiny_dataset_dir}",
            "data.batch_size=32",
            "data.sampler=weighted",
            "trainer.max_epochs=1",
            "~callbacks.rich_progress_bar",
            "test=false",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    shift = float(
        torch.load(metrics["best_model_path"], weights_only=False)["state_dict"]["prior_logit_shift"]
    )
    model = load_checkpoint_model(metrics["best_model_path"])

    dm = MMDigitsDataModule(dir=str(tiny_dataset_dir), batch_size=32)
    dm.setup("fit")
    # trained at a 50 % prior on data with ~30 % positives: eval logits move by logit(p) - logit(0.5)
    assert shift == pytest.approx(math.log(dm.pos_rate / (1 - dm.pos_rate)), abs=1e-5)
    assert shift < -0.3
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        corrected = model(batch)
        raw = model.fusion(model.features(batch)).squeeze(-1)
    assert torch.allclose(corrected, raw + shift, atol=1e-5)
