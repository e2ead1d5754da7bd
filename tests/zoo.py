"""The model zoo as the configs define it: every option of conf/audio_encoder/, conf/image_encoder/ and
conf/fusion/ (the one source of truth; the contract tests are parametrized over these files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def zoo(group: str, conf: Path = CONF) -> dict[str, dict[str, Any]]:
    """Option name -> its config (a ``_target_`` dict) for a config group."""
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted((conf / group).glob("*.yaml"))}


def build(group: str, name: str, conf: Path = CONF, **kwargs: Any) -> Any:
    """Instantiate option ``name`` of ``group`` with ``kwargs`` overriding (or adding to) its config."""
    return instantiate({**zoo(group, conf)[name], **kwargs})
