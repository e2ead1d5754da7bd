"""Every Hydra config composes and instantiates (GPU trainers: composed and checked on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmdigits.models.module import MultimodalModule
from mmdigits.utils.run import instantiate_callbacks, instantiate_loggers
from tests.hydra_utils import CONF_DIR, compose_cfg


def resolve_all(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_default_config_composes(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    assert cfg.model_name == "cnn1d_lenet"
    assert cfg.model.image_encoder._target_.endswith("LeNet")
    assert cfg.trainer.max_epochs == 18  # the default model's own schedule...
    assert compose_cfg("train", ["model=crnn_cnn"], tmp_path).trainer.max_epochs == 4  # ...not every model's
    assert compose_cfg("train", ["trainer.max_epochs=2"], tmp_path).trainer.max_epochs == 2
    assert cfg.data.task == "match" and cfg.model.task == "match"
    assert cfg.model.audio_encoder._target_.endswith("CNN1dEncoder")
    assert cfg.model.fusion._target_.endswith("AgreementFusion")
    resolve_all(cfg)  # every interpolation resolves


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_instantiate(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    module = instantiate(cfg.model)
    assert isinstance(module, MultimodalModule)
    assert module.task == cfg.data.task
    if cfg.data.task == "image_digit":
        assert module.audio_encoder is None and module.image_encoder is not None
    if cfg.data.task == "audio_digit":
        assert module.image_encoder is None and module.audio_encoder is not None


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
    if trainer.startswith("gpu") or trainer == "ddp":
        assert t.accelerator == "gpu"
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


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_instantiate(group, tmp_path):
    for option in options(group):
        cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
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
