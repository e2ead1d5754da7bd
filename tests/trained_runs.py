"""Tiny trained runs shared by the results tests (report, embed, robustness, single, notebooks).

Each run is trained at most once per session (cached by its overrides) and gets the ``.hydra/`` files the
real CLI writes, so the report can read it like any Hydra run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict

from mmdigits.train import train
from tests.hydra_utils import compose_cfg, plain_unless_a_recipe

FAST = [
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "~callbacks.rich_progress_bar",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=1",
    "model=cnn1d_cnn",
]
_CACHE: dict[tuple[str, ...], dict[str, Any]] = {}


def write_hydra_files(cfg: Any, overrides: list[str], out: Path) -> None:
    """The ``.hydra/{config,hydra,overrides}.yaml`` files ``@hydra.main`` would have written."""
    hydra_dir = out / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    job_cfg = cfg.copy()
    with open_dict(job_cfg):
        del job_cfg["hydra"]
    OmegaConf.save(job_cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), hydra_dir / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")


def trained_run(root: Path, name: str, data_dir: Path, *extra: str) -> dict[str, Any]:
    """Train (once per session) into ``root/name``: ``{"dir", "metrics", "ckpt"}``."""
    overrides = [*plain_unless_a_recipe(extra), f"data.dir={data_dir}", *FAST, *extra]
    key = (name, *overrides)
    if key not in _CACHE:
        out = root / name
        cfg = compose_cfg("train", overrides, out)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: extra threads only add contention on shared machines
        try:
            metrics = train(cfg)
        finally:
            torch.set_num_threads(threads)
        write_hydra_files(cfg, overrides, out)
        _CACHE[key] = {"dir": out, "metrics": metrics, "ckpt": Path(metrics["best_model_path"])}
    return _CACHE[key]


def seed_runs(base: Path, data_dir: Path) -> list[dict[str, Any]]:
    """Two match runs (agreement fusion) that differ only by seed, side by side in ``base/sweep``."""
    return [trained_run(base / "sweep", f"{s}_cnn1d_cnn", data_dir, f"seed={s}") for s in (0, 1)]
