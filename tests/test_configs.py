"""Every Hydra config composes and instantiates (GPU trainers: built as written up to the missing CUDA device,
and their other arguments on CPU)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning import Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf

from mmdigits.models.module import MultimodalModule
from mmdigits.utils.run import instantiate_callbacks, instantiate_loggers
from tests.hydra_utils import CONF_DIR, compose_cfg

CUDA_TRAINERS = {  # option: (precision, devices) as written; each is built as it is, up to CUDA
    "gpu": ("16-mixed", 1),
    "gpu_bf16": ("bf16-mixed", 1),
    "ddp": ("16-mixed", 2),
}
NO_CUDA = re.compile(r"No supported gpu backend found|your machine only has")  # Lightning, devices missing


def resolve_all(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_default_config_composes(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    assert cfg.run_name == "match_cnn1d_deltas_conv_fast_agreement"
    assert cfg.model.audio_encoder.deltas is True
    # the default run's recipe (experiment=default): augmentation, EMA, the lowest-validation-loss checkpoint
    assert cfg.model.audio_speed == 0.15 and cfg.callbacks.ema.decay == 0.99
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.early_stopping is None
    assert cfg.model.image_encoder._target_.endswith("ConvEncoder")
    # budgets live in trainer/experiment configs, never in the architecture presets
    assert cfg.trainer.max_epochs == 18
    assert compose_cfg("train", ["model=crnn_cnn"], tmp_path).trainer.max_epochs == 18
    assert compose_cfg("train", ["trainer.max_epochs=2"], tmp_path).trainer.max_epochs == 2
    assert cfg.data.task == "match" and cfg.model.task == "match"
    assert cfg.model.audio_encoder._target_.endswith("CNN1dEncoder")
    assert cfg.model.fusion._target_.endswith("AgreementFusion")
    resolve_all(cfg)  # every interpolation resolves


def test_another_experiment_replaces_the_default_recipe_whole(tmp_path):
    """experiment=default, the default run's recipe, leaks into no other experiment and no search."""
    digit = compose_cfg("train", ["experiment=digit"], tmp_path)
    search = compose_cfg("train", ["hparams_search=lr_width"], tmp_path)
    for cfg in (digit, search):
        assert "ema" not in cfg.callbacks and cfg.callbacks.early_stopping is not None
        assert cfg.model.audio_speed == 0 and cfg.callbacks.model_checkpoint.monitor == "val/acc"
    assert search.run_name == "match_cnn1d_lenet_agreement" and not search.model.audio_encoder.get("deltas")
    # the former name of the default run is the same recipe
    alias = resolve_all(compose_cfg("train", ["experiment=match"], tmp_path))
    assert alias | {"deprecated": None} == resolve_all(compose_cfg("train", [], tmp_path))


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_instantiate(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    module = instantiate(cfg.model)
    assert isinstance(module, MultimodalModule)
    assert module.task.name == cfg.data.task
    if cfg.data.task == "image_digit":
        assert module.audio_encoder is None and module.image_encoder is not None
    if cfg.data.task == "audio_digit":
        assert module.image_encoder is None and module.audio_encoder is not None


def test_run_is_named_after_the_choices_made(tmp_path):
    """A preset's name never hides an override: model=crnn_cnn audio_encoder=lstm trains and is named LSTM."""
    cfg = compose_cfg("train", ["model=crnn_cnn", "audio_encoder=lstm"], tmp_path)
    assert cfg.model.audio_encoder._target_.endswith("LSTMEncoder")
    assert cfg.run_name == "match_lstm_cnn_agreement"
    assert "match_lstm_cnn_agreement" in cfg.hydra.run.dir and cfg.hydra.run.dir.endswith(f"_{os.getpid()}")
    # unimodal tasks leave out the encoder they do not read
    assert (
        compose_cfg("train", ["experiment=audio_only"], tmp_path).run_name
        == "audio_digit_cnn1d_deep_cmn_only"
    )
    assert compose_cfg("train", ["experiment=image_only"], tmp_path).run_name == "image_digit_conv"
    accurate = compose_cfg("train", ["experiment=match_accurate"], tmp_path)
    assert accurate.run_name == "match_cnn1d_deep_conv_fast_agreement"
    # an encoder given on the command line still wins over the experiment's preset
    assert compose_cfg("train", ["experiment=match_accurate", "image_encoder=lenet"], tmp_path).run_name == (
        "match_cnn1d_deep_lenet_agreement"
    )


def test_presets_hold_no_budget():
    for preset in Path(CONF_DIR, "model").glob("*.yaml"):
        cfg = OmegaConf.load(preset)
        assert "trainer" not in cfg and "callbacks" not in cfg, preset.name


@pytest.mark.parametrize("group", ["audio_encoder", "image_encoder", "fusion", "task"])
def test_group_options_instantiate(group, tmp_path):
    for option in options(group):
        cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
        module = instantiate(cfg.model)
        assert isinstance(module, MultimodalModule), (group, option)


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_instantiate(data, tmp_path, tiny_dataset_dir):
    cfg = compose_cfg("train", [f"data={data}", f"data.dir={tiny_dataset_dir}"], tmp_path)
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.hparams.get("task", cfg.data.task) == cfg.data.task


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs(trainer, tmp_path):
    cfg = compose_cfg("train", [f"trainer={trainer}"], tmp_path)
    t = cfg.trainer
    assert (t.accelerator == "gpu") == (trainer in CUDA_TRAINERS)  # each is also built as written
    if trainer in CUDA_TRAINERS:
        assert t.precision in ("16-mixed", "bf16-mixed")
        if not torch.cuda.is_available():
            # the rest of the config must still be valid Trainer arguments
            overrides = [
                f"trainer={trainer}",
                "trainer.accelerator=cpu",
                "trainer.devices=1",
                "trainer.precision=bf16-mixed",
                "~trainer.strategy",
                "~trainer.sync_batchnorm",
            ]
            if trainer != "ddp":
                overrides = overrides[:4]
            cfg = compose_cfg("train", overrides, tmp_path)
    if trainer == "ddp_cpu":
        assert t.devices == 2 and t.strategy == "ddp"
    trainer_obj = instantiate(cfg.trainer)
    assert trainer_obj.max_epochs == cfg.trainer.max_epochs


def build_until_cuda(trainer_cfg: Any, name: str) -> Trainer:
    """``instantiate(trainer_cfg)``; where it stops only because the CUDA devices it asks for are missing,
    the test is skipped, saying so. Anything wrong before that point (a misspelt precision, accelerator or
    argument) is raised."""
    try:
        return instantiate(trainer_cfg)
    except InstantiationException as err:
        cause = err.__cause__
        short = torch.cuda.device_count() < trainer_cfg.devices
        if short and isinstance(cause, MisconfigurationException) and NO_CUDA.search(str(cause)):
            pytest.skip(
                f"trainer={name} needs a CUDA device: it asks for {trainer_cfg.devices}, this machine has "
                f"{torch.cuda.device_count()} (composed, checked and built up to the accelerator)"
            )
        raise


@pytest.mark.parametrize("trainer", sorted(CUDA_TRAINERS))
def test_cuda_trainer_configs_build_as_written(trainer: str, tmp_path: Path) -> None:
    cfg = compose_cfg("train", [f"trainer={trainer}"], tmp_path)
    t = cfg.trainer
    assert (t.accelerator, t.precision, t.devices) == ("gpu", *CUDA_TRAINERS[trainer])
    built = build_until_cuda(t, trainer)
    assert (built.precision, built.num_devices) == (t.precision, t.devices)
    assert type(built.accelerator).__name__ == "CUDAAccelerator"
    assert built.max_epochs == t.max_epochs


@pytest.mark.parametrize(
    "override", ["trainer.precision=16-mixd", "trainer.accelerator=gpuu", "+trainer.bench=1"]
)
def test_a_typo_in_a_cuda_trainer_config_fails_rather_than_skips(override: str, tmp_path: Path) -> None:
    cfg = compose_cfg("train", ["trainer=gpu", override], tmp_path)
    try:
        with pytest.raises(InstantiationException, match=r"invalid|unexpected keyword"):
            build_until_cuda(cfg.trainer, "gpu")
    except pytest.skip.Exception as skipped:
        pytest.fail(f"{override} was taken for a missing CUDA device: {skipped}")


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_instantiate(group, tmp_path):
    for option in options(group):
        # ~experiment: the group's option alone, without the default run's recipe's callback settings
        cfg = compose_cfg("train", ["~experiment", f"{group}={option}"], tmp_path)
        objs = (instantiate_callbacks if group == "callbacks" else instantiate_loggers)(cfg.get(group))
        if option not in ("none",):
            assert objs, option


@pytest.mark.parametrize("group", ["debug", "experiment", "hparams_search"])
def test_global_groups_compose(group, tmp_path):
    for option in options(group):
        cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
        instantiate(cfg.model)
        resolve_all(cfg)


@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_entry_point_configs(name, tmp_path):
    cfg = compose_cfg(name, ["ckpt_path=x.ckpt"], tmp_path)
    resolve_all(cfg)
    instantiate(cfg.trainer)


def test_reliability_callbacks_come_from_the_config(tmp_path):
    from mmdigits.utils.checkpoint_io import LastCheckpointEveryEpoch
    from mmdigits.utils.seeding import BatchSeed
    from mmdigits.utils.signals import CheckpointOnInterrupt

    cfg = compose_cfg("train", [], tmp_path)
    kinds = {type(c) for c in instantiate_callbacks(cfg.callbacks)}
    assert {LastCheckpointEveryEpoch, CheckpointOnInterrupt, BatchSeed} <= kinds
    assert LastCheckpointEveryEpoch not in {type(c) for c in instantiate_callbacks(cfg.callbacks, False)}
    assert not instantiate_callbacks(compose_cfg("train", ["callbacks=none"], tmp_path).callbacks)


def test_augment_group_is_off_without_a_recipe_and_shared_by_the_recipes(tmp_path):
    plain = compose_cfg("train", ["~experiment"], tmp_path).model
    assert (plain.audio_speed, plain.audio_time_mask, plain.audio_freq_mask) == (0, 0, 0)
    assert plain.image_affine is None
    strong = compose_cfg("train", ["augment=strong"], tmp_path).model
    assert (strong.audio_speed, strong.audio_time_mask, strong.audio_freq_mask) == (0.15, 10, 3)
    assert strong.image_shift == 0 and dict(strong.image_affine) == {"degrees": 10, "scale": 0.1, "shift": 2}
    for experiment in ("default", "match_accurate", "match_only"):
        model = compose_cfg("train", [f"experiment={experiment}"], tmp_path).model
        augment = ("audio_speed", "audio_time_mask", "audio_freq_mask", "image_shift", "image_affine")
        assert {k: model[k] for k in augment} == {k: strong[k] for k in augment}, experiment
    # a key given on the command line still wins over the group
    cli = compose_cfg("train", ["experiment=match_only", "model.audio_speed=0.3"], tmp_path)
    assert cli.model.audio_speed == 0.3


def test_a_misspelt_image_affine_key_fails_when_the_model_is_built(tmp_path):
    cfg = compose_cfg("train", ["experiment=image_only", "+model.image_affine.elastc=34"], tmp_path)
    with pytest.raises(InstantiationException, match=r"ValueError.*model.image_affine=.*elastc.*it takes"):
        instantiate(cfg.model)
    cfg = compose_cfg("train", ["experiment=image_only", "+model.image_affine.elastic=34"], tmp_path)
    assert instantiate(cfg.model).hparams.image_affine["elastic"] == 34


def but(node, *keys: str) -> dict:
    """A config node's entries except ``keys``: what two recipes must share."""
    return {k: v for k, v in node.items() if k not in keys}


def test_image_only_mnist_is_the_image_recipe_on_its_own_whole_mnist_build(tmp_path):
    base = compose_cfg("train", ["experiment=image_only"], tmp_path)
    whole = compose_cfg("train", ["experiment=image_only_mnist"], tmp_path)
    assert dict(whole.data.build) == {"n_train": 60000}  # one pair per MNIST training image
    assert whole.data.dir == f"{base.data.dir}/mnist60k"  # never the default build's directory
    for key in ("model", "trainer", "callbacks", "run_name"):
        assert whole[key] == base[key], key
    assert list(whole.tags) == [*base.tags, "mnist60k"]
    assert but(whole.data, "dir", "build") == but(base.data, "dir", "build")


def test_image_only_mnist_refit_is_the_mnist_recipe_refit_on_every_image_in_float32(tmp_path):
    """No default depends on one CPU's instruction set: precision is the trainer's (float32 on the CPU)."""
    mnist = compose_cfg("train", ["experiment=image_only_mnist"], tmp_path)
    refit = compose_cfg("train", ["experiment=image_only_mnist_refit"], tmp_path)
    assert mnist.data.val_fraction > 0 and refit.data.val_fraction == 0
    assert but(refit.data, "val_fraction") == but(mnist.data, "val_fraction")
    assert refit.model == mnist.model
    assert refit.callbacks.model_checkpoint.monitor is None  # nothing to select on: the last epoch
    assert but(refit.callbacks, "model_checkpoint") == but(mnist.callbacks, "model_checkpoint")
    assert refit.trainer == mnist.trainer and refit.trainer.precision == "32-true"
    for trainer, precision in (("cpu_bf16", "bf16-mixed"), ("gpu", "16-mixed")):
        cfg = compose_cfg("train", ["experiment=image_only_mnist_refit", f"trainer={trainer}"], tmp_path)
        assert cfg.trainer.precision == precision and cfg.trainer.max_epochs == refit.trainer.max_epochs


@pytest.mark.parametrize(
    ("old", "new"),
    [("image_only_mnist_all", "image_only_mnist_refit"), ("match_only", "match_labels_only"),
     ("fusion_study_match_only", "fusion_study_match_labels_only"), ("match", None)],
)  # fmt: skip
def test_former_experiment_names_are_aliases_that_say_so(old, new, tmp_path):
    """A former name composes the recipe it became (match: the default run) and carries the message the
    run logs."""
    aliased = compose_cfg("train", [f"experiment={old}"], tmp_path)
    target = compose_cfg("train", [f"experiment={new}"] if new else [], tmp_path)
    assert f"experiment={old}" in aliased.deprecated
    for key in ("model", "data", "trainer", "callbacks"):
        assert aliased[key] == target[key], key


def test_callback_choices_keep_the_resume_callbacks_or_say_so(tmp_path, caplog):
    """callbacks=ema is the default set plus EMA; a choice without the resume callbacks warns that the run
    cannot be resumed, naming what it lacks."""
    import logging

    from lightning.pytorch.callbacks import EMAWeightAveraging

    def kinds(overrides: list[str]) -> set[type]:
        return {type(c) for c in instantiate_callbacks(compose_cfg("train", overrides, tmp_path).callbacks)}

    assert kinds(["callbacks=ema"]) == kinds([]) | {EMAWeightAveraging}
    with caplog.at_level(logging.WARNING, logger="mmdigits"):
        kinds(["callbacks=none"])
    assert "cannot be resumed" in caplog.text and "last_checkpoint" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmdigits"):
        kinds([])
    assert "cannot be resumed" not in caplog.text
