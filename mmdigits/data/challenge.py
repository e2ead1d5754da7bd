"""Load and validate a challenge-format directory (built by mmdigits or the original challenge files)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mmdigits.errors import DataError

N_PIXELS = 784
N_MFCC = 13
SPLITS = ("train", "test")


@dataclass
class SplitData:
    """One split. ``spoken``: object array of float32 (frames, 13) arrays; optional arrays may be None."""

    written: np.ndarray  # uint8 (n, 784)
    spoken: np.ndarray  # object (n,)
    match: np.ndarray | None = None  # bool (n,)
    digit_written: np.ndarray | None = None  # int64 (n,)
    digit_spoken: np.ndarray | None = None  # int64 (n,)
    speaker: np.ndarray | None = None  # int64 (n,), speaker of the audio
    utterance: np.ndarray | None = None  # int64 (n,), id of the source utterance
    source: np.ndarray | None = None  # int64 (n,), source image index

    def __len__(self) -> int:
        return len(self.written)

    @property
    def has_digit_labels(self) -> bool:
        return self.digit_written is not None and self.digit_spoken is not None


@dataclass
class ChallengeData:
    """Both splits of a challenge directory plus its manifest (None for the original challenge files)."""

    dir: Path
    train: SplitData
    test: SplitData
    manifest: dict[str, Any] | None = None

    @property
    def has_digit_labels(self) -> bool:
        return self.train.has_digit_labels and self.test.has_digit_labels

    def split(self, name: str) -> SplitData:
        return {"train": self.train, "test": self.test}[name]


# ----------------------------------------------------------------------------- loading


def _load_npy(path: Path, required: bool, allow_pickle: bool = False) -> np.ndarray | None:
    if not path.is_file():
        if required:
            raise DataError(f"{path}: missing file; expected a .npy array of the challenge format")
        return None
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except Exception as e:  # truncated/corrupt files raise many types (ValueError, EOFError, UnpicklingError)
        raise DataError(f"{path}: truncated or corrupt .npy file ({type(e).__name__}: {e})") from e


def _first_bad_row(bad: np.ndarray) -> int:
    rows = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim > 1 else bad
    return int(np.argmax(rows))


def check_written(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """(n, 784) pixels 0..255 (uint8 or numeric in range) -> uint8 (n, 784)."""
    if arr.ndim == 3 and arr.shape[1:] == (28, 28):
        arr = arr.reshape(len(arr), N_PIXELS)
    if arr.ndim != 2 or arr.shape[1] != N_PIXELS:
        raise DataError(f"{path}: images have shape {arr.shape}; expected (n, {N_PIXELS}) pixels per row")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: dtype {arr.dtype}; expected numeric pixels 0..255")
    with np.errstate(invalid="ignore"):
        bad = (
            ~np.isfinite(arr) | (arr < 0) | (arr > 255) if arr.dtype.kind == "f" else (arr < 0) | (arr > 255)
        )
    if bad.any():
        r = _first_bad_row(bad)
        c = int(np.argmax(bad[r]))
        raise DataError(f"{path}: row {r}, column {c}: pixel value {arr[r, c]}; expected 0..255")
    return np.rint(arr).astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8)


def check_spoken(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Object array of 2-D finite (frames>=1, 13) arrays -> object array of float32 arrays (sharing kept)."""
    if arr.dtype != object or arr.ndim != 1:
        raise DataError(
            f"{path}: array of dtype {arr.dtype} and shape {arr.shape}; expected a 1-D object array of "
            f"(frames, {N_MFCC}) float arrays"
        )
    converted: dict[int, np.ndarray] = {}
    first_row: dict[int, int] = {}
    out = np.empty(len(arr), dtype=object)
    for i, x in enumerate(arr):
        key = id(x)
        if key not in converted:
            if not isinstance(x, np.ndarray) or x.ndim != 2:
                desc = (
                    f"{x.ndim}-D array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
                )
                raise DataError(f"{path}: row {i}: {desc}; expected a 2-D float array (frames, {N_MFCC})")
            if x.shape[1] != N_MFCC:
                raise DataError(
                    f"{path}: row {i}: shape {x.shape}; expected {N_MFCC} columns (frames, {N_MFCC})"
                )
            if x.shape[0] < 1:
                raise DataError(f"{path}: row {i}: shape {x.shape} has no frames; expected >= 1 frame")
            if x.dtype.kind not in "biuf":
                raise DataError(f"{path}: row {i}: dtype {x.dtype}; expected float MFCC values")
            converted[key] = x if x.dtype == np.float32 else x.astype(np.float32)
            first_row[key] = i
        out[i] = converted[key]
    if len(converted):
        uniq = list(converted.values())
        lengths = np.array([len(u) for u in uniq])
        finite = np.isfinite(np.concatenate(uniq)).all(axis=1)
        if not finite.all():
            frame = int(np.argmin(finite))
            u = int(np.searchsorted(np.cumsum(lengths), frame, side="right"))
            row = first_row[list(converted)[u]]
            f = frame - int(np.sum(lengths[:u]))
            raise DataError(
                f"{path}: row {row}, frame {f}: non-finite MFCC value (NaN/inf); expected finite floats"
            )
    return out


def check_binary(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Boolean or 0/1 labels -> bool."""
    arr = arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
    if arr.ndim != 1:
        raise DataError(f"{path}: labels have shape {arr.shape}; expected (n,) boolean or 0/1")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{path}: dtype {arr.dtype}; expected boolean or 0/1 labels")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"{path}: row {r}: label {arr[r]}; expected boolean or 0/1")
    return arr.astype(bool)


def check_int(arr: np.ndarray, path: Path | str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """1-D integer ids (optionally within [lo, hi]) -> int64."""
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(f"{path}: array of dtype {arr.dtype}, shape {arr.shape}; expected (n,) integers")
    bad = np.zeros(len(arr), bool)
    if lo is not None:
        bad |= arr < lo
    if hi is not None:
        bad |= arr > hi
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"{path}: row {r}: value {arr[r]}; expected an integer in [{lo}, {hi}]")
    return arr.astype(np.int64)


def _load_split(d: Path, split: str, use_digit_labels: bool) -> SplitData:
    p = {name: d / f"{name}_{split}.npy" for name in ("written", "spoken", "match")}
    written = check_written(_load_npy(p["written"], True), p["written"])  # type: ignore[arg-type]
    n = len(written)

    def rows_ok(arr: np.ndarray, path: Path) -> np.ndarray:
        if len(arr) != n:
            raise DataError(f"{path}: {len(arr)} rows; expected {n} rows like {p['written']}")
        return arr

    spoken_raw = _load_npy(p["spoken"], True, allow_pickle=True)
    spoken = check_spoken(rows_ok(spoken_raw, p["spoken"]), p["spoken"])  # type: ignore[arg-type]
    match_raw = _load_npy(p["match"], split == "train")
    match = None if match_raw is None else rows_ok(check_binary(match_raw, p["match"]), p["match"])
    extra: dict[str, np.ndarray | None] = {}
    names = {"speaker": "speaker_spoken", "utterance": "utterance_spoken", "source": "source_written"}
    if use_digit_labels:
        names.update(digit_written="digit_written", digit_spoken="digit_spoken")
    for key, stem in names.items():
        path = d / f"{stem}_{split}.npy"
        arr = _load_npy(path, False)
        if arr is not None:
            arr = rows_ok(check_int(arr, path, *((0, 9) if key.startswith("digit") else (0, None))), path)
        extra[key] = arr
    return SplitData(written, spoken, match, **extra)


def load_challenge_dir(directory: str | os.PathLike[str], use_digit_labels: bool = True) -> ChallengeData:
    """Load and validate ``directory`` (never modifies it).

    With ``use_digit_labels=False`` no ``digit_*`` file is opened (or even looked up).
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: dataset directory not found; expected the challenge .npy files in it")
    manifest = None
    if (d / "manifest.json").is_file():
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except ValueError as e:
            raise DataError(f"{d / 'manifest.json'}: corrupt JSON ({e})") from e
    train = _load_split(d, "train", use_digit_labels)
    return ChallengeData(d, train, _load_split(d, "test", use_digit_labels), manifest)


def describe(data: ChallengeData) -> dict[str, Any]:
    """Small summary (rows, positives, available arrays) for logs."""
    out: dict[str, Any] = {}
    for s in SPLITS:
        sp = data.split(s)
        out[s] = {
            "rows": len(sp),
            "positives": None if sp.match is None else int(sp.match.sum()),
            "arrays": [f.name for f in fields(sp) if getattr(sp, f.name) is not None],
        }
    return out
