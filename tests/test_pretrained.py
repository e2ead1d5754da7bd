"""Encoders started from unimodal experts' checkpoints (model.pretrained), frozen and unfrozen by the
freeze_experts callback, and a run that records what it started from."""

from __future__ import annotations

import shutil

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from mmdigits.errors import CheckpointError, MMDigitsError
from mmdigits.models.finetune import FreezeExperts
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.models.module import MultimodalModule
from mmdigits.models.pretrained import StartFromExperts
from tests.hydra_utils import compose_cfg, plain_unless_a_recipe
from tests.trained_runs import FAST, trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def expert(tmp_path_factory, tiny_dataset_dir):
    """An audio_digit run (cnn1d encoder, concat fusion) and a private copy of its checkpoint."""
    run = trained_run(tmp_path_factory.getbasetemp(), "audio_expert", tiny_dataset_dir, "model=audio_only")
    copy = tmp_path_factory.mktemp("expert") / "expert.ckpt"
    shutil.copy(run["ckpt"], copy)
    return copy


def build(data_dir, *overrides):
    """The model and datamodule of a train config (tiny data, audio_only) with ``overrides``."""
    plain = plain_unless_a_recipe(overrides)
    cfg = compose_cfg("train", [*plain, f"data.dir={data_dir}", *FAST, "model=audio_only", *overrides])
    return instantiate(cfg.model), instantiate(cfg.data, _convert_="all")


def trainer(max_epochs=0, callbacks=(), **kw):
    quiet = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
    return L.Trainer(
        max_epochs=max_epochs,
        callbacks=[StartFromExperts(), *callbacks],  # as mmdigits.train adds it
        logger=False,
        enable_checkpointing=False,
        **quiet,
        **kw,
    )


def eval_loss(model, batch):
    model.eval()
    with torch.no_grad():
        return float(model.task.loss(model(batch), batch["target"], 0.0))


def test_a_model_started_from_its_expert_has_the_experts_loss(expert, tiny_dataset_dir):
    model, dm = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={expert}")
    assert model.experts_pending
    trainer().fit(model, datamodule=dm)  # no epochs: StartFromExperts at fit start alone
    assert not model.experts_pending
    batch = next(iter(dm.train_dataloader()))
    ref = load_checkpoint_model(expert)
    assert eval_loss(model, batch) == pytest.approx(eval_loss(ref, batch), abs=1e-6)
    assert torch.equal(model.fusion.head[0].weight, ref.fusion.head[0].weight)  # the read-out came too
    waiting, _ = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={expert}")
    bare = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(
        MMDigitsError, match="nothing copied them: add mmdigits.models.pretrained.StartFromEx"
    ):
        bare.fit(waiting, datamodule=dm)  # never trains a model that waits for its experts
    fresh, dm2 = build(tiny_dataset_dir)
    trainer().fit(fresh, datamodule=dm2)
    assert eval_loss(fresh, batch) != pytest.approx(eval_loss(ref, batch), abs=1e-3)  # the test can fail


def test_the_experts_statistics_win_over_the_datamodules(expert, tiny_dataset_dir, tmp_path):
    ckpt = torch.load(expert, weights_only=True)
    ckpt["state_dict"]["audio_mean"] = ckpt["state_dict"]["audio_mean"] + 1.0
    shifted = tmp_path / "shifted.ckpt"
    torch.save(ckpt, shifted)
    model, dm = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={shifted}")
    trainer().fit(model, datamodule=dm)
    assert torch.equal(model.audio_mean, ckpt["state_dict"]["audio_mean"])
    assert not torch.allclose(model.audio_mean, dm.stats["audio_mean"])


def test_heads_false_copies_the_encoder_only(expert, tiny_dataset_dir):
    model, dm = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={expert}",
                      "model.pretrained.heads=false")  # fmt: skip
    trainer().fit(model, datamodule=dm)
    ref = load_checkpoint_model(expert)
    assert all(
        torch.equal(a, b) for a, b in zip(model.audio_encoder.parameters(), ref.audio_encoder.parameters())
    )
    assert not torch.equal(model.fusion.head[0].weight, ref.fusion.head[0].weight)


def test_an_expert_of_another_encoder_config_is_refused_in_one_line(expert, tiny_dataset_dir):
    model, dm = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={expert}",
                      "+model.audio_encoder.kernel_size=3")  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        trainer().fit(model, datamodule=dm)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(expert))
    assert "audio encoder config differs" in message and "kernel_size: 5 != 3" in message


def test_an_expert_for_a_missing_modality_is_refused(expert):
    audio = {"_target_": "mmdigits.models.audio.CNN1dEncoder"}
    with pytest.raises(MMDigitsError, match="model.pretrained.image is set, but this model has no image enc"):
        MultimodalModule(task="audio_digit", audio_encoder=audio, pretrained={"image": str(expert)})
    with pytest.raises(MMDigitsError, match="expected a mapping with keys image, audio, heads"):
        MultimodalModule(task="audio_digit", audio_encoder=audio, pretrained={"audi": str(expert)})


class Snapshots(Callback):
    """The audio encoder's state and the head's weight at the end of each training epoch."""

    def __init__(self) -> None:
        self.encoder, self.head, self.lrs = [], [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.encoder.append({k: v.clone() for k, v in pl_module.audio_encoder.state_dict().items()})
        self.head.append(pl_module.fusion.head[0].weight.detach().clone())
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_frozen_experts_stay_frozen_then_unfreeze_at_the_given_epoch(expert, tiny_dataset_dir):
    model, dm = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={expert}")
    snaps = Snapshots()
    freeze = FreezeExperts(unfreeze_at_epoch=1, lr_factor=0.1)
    trainer(max_epochs=2, callbacks=[freeze, snaps], limit_train_batches=3, limit_val_batches=1).fit(
        model, dm
    )
    start = load_checkpoint_model(expert).audio_encoder.state_dict()
    after_0, after_1 = snaps.encoder
    assert all(torch.equal(after_0[k], start[k]) for k in start)  # weights and batch-norm statistics
    assert not torch.equal(snaps.head[0], load_checkpoint_model(expert).fusion.head[0].weight)  # head trained
    assert any(not torch.equal(after_1[k], start[k]) for k in start)  # unfrozen at epoch 1
    assert len(snaps.lrs[0]) == 1 and len(snaps.lrs[1]) == 2  # the encoders' own group
    assert snaps.lrs[1][1] == pytest.approx(0.1 * snaps.lrs[1][0])  # on the same (one-cycle) schedule
    assert all(p.requires_grad for p in model.audio_encoder.parameters())


def test_freeze_experts_composes_with_the_default_callbacks():
    cfg = compose_cfg("train", ["callbacks=[default,freeze_experts]", "pretrained=experts"])
    assert {"last_checkpoint", "checkpoint_on_interrupt", "freeze_experts"} <= set(cfg.callbacks)
    assert isinstance(instantiate(cfg.callbacks.freeze_experts), FreezeExperts)


def test_a_pretrained_run_records_its_experts_and_never_copies_them_again(expert, tiny_dataset_dir, tmp_path):
    copy = tmp_path / "expert.ckpt"
    shutil.copy(expert, copy)
    run = trained_run(tmp_path, "from_expert", tiny_dataset_dir, "model=audio_only", "pretrained=experts",
                      f"model.pretrained.audio={copy}", "callbacks=[default,freeze_experts]")  # fmt: skip
    recorded = {"image": None, "audio": str(copy), "heads": True}
    assert run["metrics"]["pretrained"] == recorded
    assert run["metrics"]["run_name"] == "audio_digit_cnn1d_from_experts"
    assert torch.load(run["ckpt"], weights_only=True)["hyper_parameters"]["pretrained"] == recorded
    copy.unlink()  # reloading, resuming or fitting the run's own weights needs no expert
    model = load_checkpoint_model(run["ckpt"])
    assert isinstance(model, MultimodalModule) and not model.experts_pending
    resumed, dm = build(tiny_dataset_dir, "pretrained=experts", f"model.pretrained.audio={copy}")
    last = run["dir"] / "checkpoints" / "last.ckpt"  # a finished run: the restore, on_fit_start, no epoch
    trainer(max_epochs=1, callbacks=[FreezeExperts(unfreeze_at_epoch=3)]).fit(resumed, dm, ckpt_path=last)
    assert not resumed.experts_pending
