"""Compose the project's Hydra configs outside ``@hydra.main`` (benchmarks, notebooks, tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# mmdigits/conf: a link to the repository's conf/ in a checkout, the configs themselves in a wheel
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(
    config_name: str = "train", overrides: list[str] | None = None, output_dir: str | Path | None = None
) -> DictConfig:
    """``config_name`` with ``overrides``, as ``@hydra.main`` would compose it; with ``output_dir`` the run's
    directory (``paths.output_dir``) is set and the config is registered as the current Hydra config."""
    import mmdigits  # noqa: F401  (registers the config resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
