"""Integration tests on the real corpora in $MMDIGITS_RAW_DIR (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmdigits.data.build import build_dataset, is_complete, read_manifest
from mmdigits.data.raw import KNOWN_SHA256

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_raw_dir() -> Path:
    raw = os.environ.get("MMDIGITS_RAW_DIR")
    if not raw:
        pytest.skip("MMDIGITS_RAW_DIR is not set (point it at the raw corpora to run integration tests)")
    p = Path(raw)
    if not (p / "mnist").is_dir() or not (p / "arabic_digits").is_dir():
        pytest.skip(f"MMDIGITS_RAW_DIR={p} does not hold mnist/ and arabic_digits/")
    return p


@pytest.fixture(scope="module")
def full_arabic(real_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default build (its time: python -m mmdigits.bench.data --build-from RAW_DIR)."""
    return build_dataset(tmp_path_factory.mktemp("full") / "Dataset", real_raw_dir, download=False)


def test_full_arabic_build(full_arabic: Path) -> None:
    d = full_arabic
    m = read_manifest(d)
    assert m is not None and is_complete(d)
    assert m["settings"]["n_train"] == 45_000 and m["settings"]["n_test"] == 15_000
    for k in ("mnist/train-images-idx3-ubyte.gz", "arabic_digits/Test_Arabic_Digit.txt"):
        assert m["raw_sha256"][k] == KNOWN_SHA256[k]
    ld = lambda n: np.load(d / f"{n}.npy")  # noqa: E731
    assert ld("match_train").sum() == 4500 and ld("match_test").sum() == 1500
    src = ld("source_written_train")
    assert len(np.unique(src)) == 45_000 and src.max() < 60_000
    assert ld("source_written_test").max() < 10_000 and len(np.unique(ld("source_written_test"))) == 10_000
    assert set(ld("utterance_spoken_train").tolist()).isdisjoint(ld("utterance_spoken_test").tolist())
    assert set(ld("speaker_spoken_train").tolist()).isdisjoint(ld("speaker_spoken_test").tolist())
    assert ld("speaker_spoken_train").max() == 65 and ld("speaker_spoken_test").min() == 66
    wtr, wte = ld("written_train"), ld("written_test")
    assert not {r.tobytes() for r in wtr} & {r.tobytes() for r in wte[::10]}
    assert np.array_equal(ld("digit_written_train") == ld("digit_spoken_train"), ld("match_train"))


def test_full_epoch(full_arabic: Path) -> None:
    import torch

    from mmdigits.data.datamodule import MMDigitsDataModule

    torch.set_num_threads(1)
    dm = MMDigitsDataModule(dir=str(full_arabic))
    dm.prepare_data()
    dm.setup("fit")
    assert set(dm.train_set.t.lengths.tolist()) and int(dm.train_set.t.lengths.max()) <= 93
    # its speed (target >= 50k pairs/s on an idle core): python -m mmdigits.bench.data, row 'none True'
    n = sum(len(b["index"]) for b in dm.train_dataloader())
    assert n == len(dm.train_set) and abs(dm.pos_rate - 0.1) < 0.01


def test_determinism_small(real_raw_dir: Path, tmp_path: Path) -> None:
    kw = {"n_train": 2000, "n_test": 1000, "seed": 1, "download": False}
    a = build_dataset(tmp_path / "a", real_raw_dir, **kw)
    b = build_dataset(tmp_path / "b", real_raw_dir, **kw)
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name


def test_fsdd_build_small(real_raw_dir: Path, tmp_path: Path) -> None:
    if not (real_raw_dir / "fsdd" / "recordings").is_dir():
        pytest.skip(f"{real_raw_dir}/fsdd/recordings absent")
    d = build_dataset(
        tmp_path / "fsdd",
        real_raw_dir,
        audio="fsdd",
        n_train=1000,
        n_test=300,
        match_rate=0.1,
        download=False,
    )
    m = read_manifest(d)
    assert m["raw_sha256"]["fsdd/SHA256SUMS"] == KNOWN_SHA256["fsdd/SHA256SUMS"]
    sp_tr, sp_te = np.load(d / "speaker_spoken_train.npy"), np.load(d / "speaker_spoken_test.npy")
    assert set(sp_te.tolist()) == {5} and 5 not in set(sp_tr.tolist())  # yweweler held out
    frames = np.load(d / "spoken_test_frames.npy", allow_pickle=False)
    assert frames.shape[1] == 13 and frames.dtype == np.float32
    assert np.load(d / "match_train.npy").sum() == 100
