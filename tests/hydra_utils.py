"""Compose the project's Hydra configs in tests, the way @hydra.main would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from mmdigits.utils.config import CONF_DIR, compose_config

__all__ = ["CONF_DIR", "compose_cfg"]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose ``config_name`` with ``overrides``; resolve ``paths.output_dir`` to ``output_dir``."""
    return compose_config(config_name, overrides, output_dir)


def plain_unless_a_recipe(overrides: Sequence[str]) -> list[str]:
    """``["~experiment"]`` (the plain training, without the default run's recipe) unless ``overrides`` name
    an ``experiment=``, which replaces the default recipe itself. Tiny test runs train plainly: the default
    recipe's EMA (decay 0.99) barely moves in their few steps."""
    return [] if any(o.startswith("experiment=") for o in overrides) else ["~experiment"]
