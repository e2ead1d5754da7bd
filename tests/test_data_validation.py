from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mmdigits.data.challenge import check_spoken, check_written, load_challenge_dir
from mmdigits.errors import DataError
from tests.synthetic import write_challenge_files

BASE = ("written", "spoken", "match")


@pytest.fixture
def challenge_copy(tiny_dataset_dir: Path, tmp_path: Path) -> Path:
    return write_challenge_files(tiny_dataset_dir, tmp_path / "copy", labels=True)


def save_obj(path: Path, rows: list[np.ndarray]) -> None:
    arr = np.empty(len(rows), object)
    for i, r in enumerate(rows):
        arr[i] = r
    np.save(path, arr, allow_pickle=True)


def mutate_spoken(d: Path, row: int, new: object) -> None:
    s = list(np.load(d / "spoken_train.npy", allow_pickle=True))
    s[row] = new
    save_obj(d / "spoken_train.npy", s)


def test_load_built(tiny_dataset_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in tiny_dataset_dir.iterdir()}
    data = load_challenge_dir(tiny_dataset_dir)
    assert data.has_digit_labels and len(data.train) == 400 and len(data.test) == 200
    assert data.train.match.dtype == np.bool_ and data.test.match is not None
    assert data.manifest is None or isinstance(data.manifest, dict)
    assert {p.name: p.read_bytes() for p in tiny_dataset_dir.iterdir()} == before  # never modified


def test_original_challenge_files_only(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    data = load_challenge_dir(write_challenge_files(tiny_dataset_dir, tmp_path))
    assert not data.has_digit_labels and data.test.match is None and data.train.speaker is None


def test_match_only_never_reads_digit_labels(tiny_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []

    def spy(fn: Callable) -> Callable:
        def wrapper(file: object, *a: object, **k: object) -> object:
            touched.append(str(file))
            return fn(file, *a, **k)

        return wrapper

    monkeypatch.setattr(np, "load", spy(np.load))
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(Path, "open", spy(Path.open))
    data = load_challenge_dir(tiny_dataset_dir, use_digit_labels=False)
    assert not data.has_digit_labels and data.train.digit_written is None
    assert any("spoken_train" in t for t in touched)  # the spy works
    assert not [t for t in touched if "digit_" in Path(t).name]


@pytest.mark.parametrize(
    ("name", "make", "pattern"),
    [
        ("nan", lambda r: r.__setitem__((1, 2), np.nan) or r, r"row 7, frame 1: non-finite"),
        ("zero-frame", lambda r: np.zeros((0, 13), np.float32), r"row 7: shape \(0, 13\) has no frames"),
        ("12-cols", lambda r: r[:, :12], r"row 7: shape \(\d+, 12\); expected 13 columns"),
        ("not-2d", lambda r: r.ravel(), r"row 7: 1-D array.*expected a 2-D float array"),
        ("not-array", lambda r: "hello", r"row 7: str; expected a 2-D"),
    ],
)
def test_bad_spoken_rows(challenge_copy: Path, name: str, make: Callable, pattern: str) -> None:
    row = np.load(challenge_copy / "spoken_train.npy", allow_pickle=True)[7].copy()
    mutate_spoken(challenge_copy, 7, make(row))
    with pytest.raises(DataError, match=r"spoken_train\.npy: " + pattern):
        load_challenge_dir(challenge_copy)


def test_bad_written(challenge_copy: Path) -> None:
    w = np.load(challenge_copy / "written_train.npy")
    np.save(challenge_copy / "written_train.npy", w[:, :783])
    with pytest.raises(
        DataError, match=r"written_train\.npy: images have shape \(400, 783\); expected \(n, 784\)"
    ):
        load_challenge_dir(challenge_copy)
    w2 = w.astype(np.int32)
    w2[11, 5] = 300
    np.save(challenge_copy / "written_train.npy", w2)
    with pytest.raises(
        DataError, match=r"written_train\.npy: row 11, column 5: pixel value 300; expected 0\.\.255"
    ):
        load_challenge_dir(challenge_copy)
    np.save(challenge_copy / "written_train.npy", w.astype(np.float64))  # numeric in range is accepted
    assert load_challenge_dir(challenge_copy).train.written.dtype == np.uint8


def test_mismatched_rows(challenge_copy: Path) -> None:
    np.save(challenge_copy / "match_train.npy", np.load(challenge_copy / "match_train.npy")[:-1])
    with pytest.raises(
        DataError, match=r"match_train\.npy: 399 rows; expected 400 rows like .*written_train"
    ):
        load_challenge_dir(challenge_copy)


def test_non_boolean_labels(challenge_copy: Path) -> None:
    m = np.load(challenge_copy / "match_train.npy").astype(np.int64)
    np.save(challenge_copy / "match_train.npy", m)
    assert load_challenge_dir(challenge_copy).train.match.dtype == np.bool_  # 0/1 accepted
    m[13] = 2
    np.save(challenge_copy / "match_train.npy", m)
    with pytest.raises(DataError, match=r"match_train\.npy: row 13: label 2; expected boolean or 0/1"):
        load_challenge_dir(challenge_copy)


def test_truncated_and_missing_npy(challenge_copy: Path) -> None:
    p = challenge_copy / "spoken_test.npy"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match=r"spoken_test\.npy: truncated or corrupt"):
        load_challenge_dir(challenge_copy)
    p.unlink()
    with pytest.raises(DataError, match=r"spoken_test\.npy: missing file"):
        load_challenge_dir(challenge_copy)
    q = challenge_copy / "written_train.npy"
    q.write_bytes(q.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"written_train\.npy: truncated or corrupt"):
        load_challenge_dir(challenge_copy)


def test_validation_at_full_scale_shares_each_utterance_once() -> None:
    """60,000 rows over 6,600 utterances (the size of a default build): every row maps to its own utterance's
    frames, each utterance is stored once. Its speed is reported by python -m mmdigits.bench.data (setup)."""
    rng = np.random.default_rng(0)
    uniq = [rng.normal(size=(int(n), 13)).astype(np.float32) for n in rng.integers(4, 94, 6600)]
    picks = rng.integers(0, 6600, 60_000)
    spoken = np.empty(60_000, object)
    for i, j in enumerate(picks):
        spoken[i] = uniq[j]
    utts, row_audio = check_spoken(spoken, "x")
    assert len(utts.lengths) == len(np.unique(picks))
    for i in rng.integers(0, 60_000, 200):
        u = row_audio[i]
        frames = utts.frames[utts.offsets[u] : utts.offsets[u] + utts.lengths[u]]
        assert np.array_equal(frames, uniq[picks[i]])
    written = rng.integers(0, 256, (60_000, 784), dtype=np.int64)
    assert np.array_equal(check_written(written, "y"), written)
