"""Shared fixtures: tiny synthetic raw corpora and a tiny built challenge dataset (no network, < 3 s)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdigits.data.build import build_dataset
from tests.synthetic import write_tiny_corpora

TINY_BUILD = {"n_train": 400, "n_test": 200, "match_rate": 0.3, "seed": 0}


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No downloads during tests unless a test passes download=True explicitly; caches under tmp."""
    old = {k: os.environ.get(k) for k in ("MMDIGITS_NO_DOWNLOAD", "MMDIGITS_CACHE_DIR")}
    os.environ["MMDIGITS_NO_DOWNLOAD"] = "1"
    os.environ["MMDIGITS_CACHE_DIR"] = str(tmp_path_factory.mktemp("mmdigits_cache"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny raw corpora: mnist/ (300 train, 100 test images), arabic_digits/ (10 train and 3 test speakers x
    10 digits x 10 reps, 5-30 frames) and fsdd/recordings/ (10 digits x 3 speakers x 2 wavs). Learnable."""
    return write_tiny_corpora(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def tiny_dataset_dir(tiny_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built challenge-format directory (Arabic audio): 400 train / 200 test pairs, match rate 0.3.
    Treat it as read-only (it is shared by the whole session)."""
    out = tmp_path_factory.mktemp("tiny_dataset") / "Dataset"
    return build_dataset(out, tiny_raw_dir, verify=False, download=False, **TINY_BUILD)


@pytest.fixture
def make_tiny_datamodule(tiny_dataset_dir: Path) -> Callable[..., Any]:
    """Factory: ``make_tiny_datamodule(task="match", **kwargs)`` -> MMDigitsDataModule on the tiny dataset
    (batch 32, eval batch 64; call ``dm.setup("fit")`` or hand it to a Trainer)."""
    from mmdigits.data.datamodule import MMDigitsDataModule

    def make(**kwargs: Any) -> MMDigitsDataModule:
        opts: dict[str, Any] = {
            "dir": str(tiny_dataset_dir),
            "batch_size": 32,
            "eval_batch_size": 64,
            **kwargs,
        }
        return MMDigitsDataModule(**opts)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: 1 intra-op thread is fastest and avoids OpenMP spin-waits on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
