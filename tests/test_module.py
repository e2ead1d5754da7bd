"""The LightningModule's prior correction for balanced sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mmdigits.data.datamodule import MMDigitsDataModule
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.models.module import MultimodalModule
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


@pytest.mark.parametrize("image_encoder", ["LeNet", "ResNet"])
def test_channels_last_changes_memory_layout_not_outputs(image_encoder):
    enc = {
        "audio_encoder": {"_target_": "mmdigits.models.audio.CNN1dEncoder"},
        "image_encoder": {"_target_": f"mmdigits.models.image.{image_encoder}"},
        "fusion": {"_target_": "mmdigits.models.fusion.AgreementFusion"},
    }
    torch.manual_seed(0)
    nhwc = MultimodalModule(**enc, channels_last=True).eval()
    nchw = MultimodalModule(**enc, channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    conv = next(
        m for m in nhwc.image_encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (
        not conv.weight.is_contiguous()
    )  # really a different layout, so the comparison below means something
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randint(0, 256, (16, 1, 28, 28), generator=g).float(),
        "audio": torch.randn(16, 40, 13, generator=g),
        "lengths": torch.randint(5, 41, (16,), generator=g),
    }
    with torch.no_grad():
        torch.testing.assert_close(nhwc(batch), nchw(batch), atol=1e-5, rtol=1e-4)
