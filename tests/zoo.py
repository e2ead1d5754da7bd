"""The model zoo as the configs define it: every option of conf/audio_encoder/, conf/image_encoder/ and
conf/fusion/ (the one source of truth; the contract tests are parametrized over these files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mmdigits.models.layers import lengths_to_mask

CONF = Path(__file__).resolve().parents[1] / "conf"


def zoo(group: str, conf: Path = CONF) -> dict[str, dict[str, Any]]:
    """Option name -> its config (a ``_target_`` dict) for a config group."""
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted((conf / group).glob("*.yaml"))}


def build(group: str, name: str, conf: Path = CONF, **kwargs: Any) -> Any:
    """Instantiate option ``name`` of ``group`` with ``kwargs`` overriding (or adding to) its config."""
    return instantiate({**zoo(group, conf)[name], **kwargs})


LENGTHS = [1, 2, 5, 17, 40, 93, 64, 3]


def randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN running stats / affine so a padding leak through BN shift would show."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.running_mean)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
            if m.affine:
                nn.init.normal_(m.weight, 1.0, 0.3)
                nn.init.normal_(m.bias, 0.0, 0.5)


def mfcc_batch(lengths: list[int], T: int, garbage: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(lengths), T, 13, generator=g)
    lens = torch.tensor(lengths)
    pad = ~lengths_to_mask(lens, T)
    x[pad] = torch.randn(int(pad.sum()), 13) * 5 if garbage else 0.0
    return x, lens
