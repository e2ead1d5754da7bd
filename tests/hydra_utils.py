"""Compose the project's Hydra configs in tests, the way @hydra.main would."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mmdigits.utils.config import CONF_DIR, compose_config

__all__ = ["CONF_DIR", "compose_cfg"]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose ``config_name`` with ``overrides``; resolve ``paths.output_dir`` to ``output_dir``."""
    return compose_config(config_name, overrides, output_dir)
