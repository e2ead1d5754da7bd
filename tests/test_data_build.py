from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import mmdigits.data.build as B
from mmdigits.data.build import build_dataset, ensure_dataset, is_complete, main
from mmdigits.errors import DataError
from tests.synthetic import write_challenge_files

SMALL = {"n_train": 120, "n_test": 150, "match_rate": 0.25, "seed": 3}


def build(raw: Path, out: Path, **kw: object) -> Path:
    return build_dataset(out, raw, verify=False, download=False, **{**SMALL, **kw})


def test_built_files_and_contract(tiny_dataset_dir: Path) -> None:
    d = tiny_dataset_dir
    m = json.loads((d / "manifest.json").read_text())
    assert m["settings"]["n_train"] == 400 and m["counts"] == {"train": 400, "test": 200}
    for split, n in (("train", 400), ("test", 200)):
        w = np.load(d / f"written_{split}.npy")
        assert w.dtype == np.uint8 and w.shape == (n, 784)
        frames = np.load(d / f"spoken_{split}_frames.npy")
        lengths, index = np.load(d / f"spoken_{split}_lengths.npy"), np.load(d / f"spoken_{split}_index.npy")
        assert frames.dtype == np.float32 and frames.shape == (lengths.sum(), 13) and lengths.min() >= 1
        assert index.shape == (n,) and index.min() >= 0 and index.max() < len(lengths)
        match = np.load(d / f"match_{split}.npy")
        assert match.dtype == np.bool_ and match.sum() == round(0.3 * n)
        dw, ds = np.load(d / f"digit_written_{split}.npy"), np.load(d / f"digit_spoken_{split}.npy")
        assert dw.dtype == np.int64 and np.array_equal(dw == ds, match)
        for stem in ("speaker_spoken", "utterance_spoken", "source_written"):
            assert np.load(d / f"{stem}_{split}.npy").dtype == np.int64
        assert (
            m["files"][f"spoken_{split}_frames.npy"]["bytes"]
            == (d / f"spoken_{split}_frames.npy").stat().st_size
        )
    assert is_complete(d)


def test_disjoint_and_image_use(tiny_dataset_dir: Path) -> None:
    d = tiny_dataset_dir
    ld = lambda n: np.load(d / f"{n}.npy")  # noqa: E731
    # train: 400 pairs > 300 tiny images -> every image used, none more than twice; test repeats (200 > 100)
    src_tr = ld("source_written_train")
    assert np.bincount(src_tr).max() == 2 and len(np.unique(src_tr)) == 300
    assert set(ld("utterance_spoken_train")).isdisjoint(ld("utterance_spoken_test"))
    assert set(ld("speaker_spoken_train")).isdisjoint(ld("speaker_spoken_test"))
    # images come from different MNIST files: check pixel rows never cross splits
    wtr, wte = ld("written_train"), ld("written_test")
    assert not {r.tobytes() for r in wtr} & {r.tobytes() for r in wte}


def test_images_used_once_when_possible(tiny_raw_dir: Path, tmp_path: Path) -> None:
    d = build(tiny_raw_dir, tmp_path / "ds", n_train=250)
    src = np.load(d / "source_written_train.npy")
    assert len(np.unique(src)) == 250
    assert np.load(d / "match_train.npy").sum() == round(0.25 * 250)


def test_deterministic_byte_identical(tiny_raw_dir: Path, tmp_path: Path) -> None:
    a, b = build(tiny_raw_dir, tmp_path / "a"), build(tiny_raw_dir, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 21
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    c = build(tiny_raw_dir, tmp_path / "c", seed=4)
    assert (a / "match_train.npy").read_bytes() != (c / "match_train.npy").read_bytes()


def test_fsdd_build_holds_out_speakers(tiny_raw_dir: Path, tmp_path: Path) -> None:
    d = build(tiny_raw_dir, tmp_path / "f", audio="fsdd", fsdd_test_speakers=["jackson"])
    sp_tr, sp_te = np.load(d / "speaker_spoken_train.npy"), np.load(d / "speaker_spoken_test.npy")
    assert set(sp_te.tolist()) == {1} and 1 not in set(sp_tr.tolist())
    assert np.load(d / "spoken_train_frames.npy").shape[1] == 13
    with pytest.raises(DataError, match="not in the corpus speakers"):
        build(tiny_raw_dir, tmp_path / "g", audio="fsdd", fsdd_test_speakers=["nobody"])


def test_ensure_reuses_complete(tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = build(tiny_raw_dir, tmp_path / "ds")
    calls: list[object] = []
    real = B.build_dataset
    monkeypatch.setattr(B, "build_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = {"verify": False, "download": False, **SMALL}
    ensure_dataset(d, tiny_raw_dir, **opts)
    assert calls == []
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    # a complete build is never rebuilt into a different one: the error names both settings
    with pytest.raises(DataError, match=r"holds a complete build with seed=3 .* but this asks for seed=9"):
        ensure_dataset(d, tiny_raw_dir, **{**opts, "seed": 9})
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    # partial: a file disagrees with the manifest -> rebuild
    f = d / "match_train.npy"
    f.write_bytes(f.read_bytes()[:-3])
    assert not is_complete(d)
    ensure_dataset(d, tiny_raw_dir, **{**opts, "seed": 9})
    assert len(calls) == 2 and is_complete(d)
    # partial: manifest missing (our build files present) -> rebuild
    (d / "manifest.json").unlink()
    ensure_dataset(d, tiny_raw_dir, **{**opts, "seed": 9})
    assert len(calls) == 3 and is_complete(d)


def test_build_writes_no_pickle(tiny_dataset_dir: Path) -> None:
    """Every file of a build reads with allow_pickle=False: nothing the project writes needs unpickling."""
    for f in tiny_dataset_dir.glob("*.npy"):
        assert np.load(f, allow_pickle=False).dtype != object, f.name


def test_user_owned_dir_untouched(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    d = write_challenge_files(tiny_dataset_dir, tmp_path / "challenge")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()}
    assert ensure_dataset(d, tmp_path / "no_raw", download=False) == d
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()} == before
    with pytest.raises(DataError, match="user-owned"):
        build_dataset(d, tmp_path / "no_raw", download=False)


def test_failed_build_leaves_no_manifest(
    tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    n = {"moves": 0}

    def flaky_replace(src: object, dst: object) -> None:
        n["moves"] += 1
        if n["moves"] == 5:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(B.os, "replace", flaky_replace)
    out = tmp_path / "ds"
    with pytest.raises(OSError):
        build(tiny_raw_dir, out)
    assert not (out / "manifest.json").exists() and not is_complete(out)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # temp build dir removed
    monkeypatch.setattr(B.os, "replace", real_replace)
    ensure_dataset(out, tiny_raw_dir, verify=False, download=False, **SMALL)  # partial -> rebuilt
    assert is_complete(out)


def test_cli(tiny_raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--raw-dir", str(tiny_raw_dir), "--out", str(out), "--n-train", "50", "--n-test", "40"]
    assert main([*args, "--match-rate", "0.2", "--seed", "1", "--no-verify", "--no-download"]) == 0
    assert "dataset ready" in capsys.readouterr().out
    assert np.load(out / "match_test.npy").sum() == 8
    assert main([*args[:3], str(tmp_path / "cli2"), *args[4:], "--no-download"]) == 2  # tiny files' checksums
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checksum mismatch" in err and len(err.strip().splitlines()) == 1
