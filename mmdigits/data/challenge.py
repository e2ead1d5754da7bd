"""Load and validate a challenge-format directory: the original challenge's files, or a build of ours.

The original challenge ships each split's utterances as an object array ``spoken_<split>.npy`` of
(frames, 13) float arrays, read here without running code (:mod:`mmdigits.data.npy`). Our builds store them
without pickle: ``spoken_<split>_frames.npy`` (every utterance's frames, concatenated), ``_lengths.npy``
(frames per utterance) and ``_index.npy`` (the utterance of each row). Either way a split holds its distinct
utterances once, concatenated, so memory grows with the number of frames, never with the longest row.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmdigits.data.npy import load_npy
from mmdigits.errors import DataError

N_PIXELS = 784
N_MFCC = 13
MAX_FRAMES = 2000  # 20 s at a 10 ms hop; spoken digits last about 1 s (Arabic: at most 93 frames)
SPLITS = ("train", "test")


@dataclass
class Utterances:
    """Distinct utterances, concatenated: utterance u is ``frames[offsets[u] : offsets[u] + lengths[u]]``."""

    frames: np.ndarray  # float32 (total frames, 13)
    lengths: np.ndarray  # int64 (U,), each >= 1

    def __post_init__(self) -> None:
        self.offsets = np.cumsum(self.lengths) - self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, u: int) -> np.ndarray:
        return self.frames[self.offsets[u] : self.offsets[u] + self.lengths[u]]

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> Utterances:
        frames = np.concatenate(arrays) if arrays else np.zeros((0, N_MFCC), np.float32)
        return cls(frames.astype(np.float32, copy=False), np.array([len(a) for a in arrays], np.int64))


@dataclass
class SplitData:
    """One split: images, utterances and the utterance of each row, plus optional labels and ids."""

    written: np.ndarray  # uint8 (n, 784)
    utterances: Utterances
    row_audio: np.ndarray  # int64 (n,): the utterance of each row
    match: np.ndarray | None = None  # bool (n,)
    digit_written: np.ndarray | None = None  # int64 (n,)
    digit_spoken: np.ndarray | None = None  # int64 (n,)
    speaker: np.ndarray | None = None  # int64 (n,), speaker of the audio
    utterance: np.ndarray | None = None  # int64 (n,), id of the source utterance
    source: np.ndarray | None = None  # int64 (n,), source image index

    def __len__(self) -> int:
        return len(self.written)

    def spoken(self, row: int) -> np.ndarray:
        """The MFCC (frames, 13) of ``row``."""
        return self.utterances[int(self.row_audio[row])]

    @property
    def row_lengths(self) -> np.ndarray:
        return self.utterances.lengths[self.row_audio]

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


# ----------------------------------------------------------------------------- checks
def _first_bad_row(bad: np.ndarray) -> int:
    rows = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim > 1 else bad
    return int(np.argmax(rows))


def check_written(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """(n, 784) whole-number pixels 0..255 -> uint8 (n, 784). Booleans, fractions and arrays whose pixels
    all lie in [0, 1] (normalised images, which rounding would binarise) are refused."""
    if arr.ndim == 3 and arr.shape[1:] == (28, 28):
        arr = arr.reshape(len(arr), N_PIXELS)
    if arr.ndim != 2 or arr.shape[1] != N_PIXELS:
        raise DataError(f"{path}: images have shape {arr.shape}; expected (n, {N_PIXELS}) pixels per row")
    if arr.dtype == np.bool_:
        raise DataError(f"{path}: boolean pixels; expected raw pixel values 0..255 (uint8)")
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{path}: dtype {arr.dtype}; expected numeric pixels 0..255")
    if arr.dtype != np.uint8:
        with np.errstate(invalid="ignore"):
            bad = (arr < 0) | (arr > 255)
            if arr.dtype.kind == "f":
                bad |= ~np.isfinite(arr)
        if bad.any():
            r = _first_bad_row(bad)
            c = int(np.argmax(bad[r]))
            raise DataError(f"{path}: row {r}, column {c}: pixel value {arr[r, c]}; expected 0..255")
        if arr.dtype.kind == "f":
            frac = arr != np.rint(arr)
            if frac.any():
                r = _first_bad_row(frac)
                c = int(np.argmax(frac[r]))
                raise DataError(
                    f"{path}: row {r}, column {c}: pixel value {arr[r, c]}; expected whole numbers 0..255 "
                    "(normalised images: multiply by 255 first)"
                )
    if arr.size and arr.max() <= 1:
        raise DataError(
            f"{path}: every pixel is 0 or 1; expected raw pixel values 0..255 "
            "(normalised or binarised images: multiply by 255 first)"
        )
    return arr if arr.dtype == np.uint8 else arr.astype(np.uint8)


def _check_utterance(x: Any, row: int, path: Path | str, max_frames: int) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        desc = f"{x.ndim}-D array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: row {row}: {desc}; expected a 2-D float array (frames, {N_MFCC})")
    if x.shape[1] != N_MFCC:
        raise DataError(f"{path}: row {row}: shape {x.shape}; expected {N_MFCC} columns (frames, {N_MFCC})")
    if x.shape[0] < 1:
        raise DataError(f"{path}: row {row}: shape {x.shape} has no frames; expected >= 1 frame")
    if x.shape[0] > max_frames:
        raise DataError(
            f"{path}: row {row}: {x.shape[0]} frames; expected at most {max_frames} (data.max_frames)"
        )
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: row {row}: dtype {x.dtype}; expected float MFCC values")
    return x.astype(np.float32, copy=False)


def _check_finite(utts: Utterances, first_row: np.ndarray, path: Path | str) -> None:
    finite = np.isfinite(utts.frames).all(axis=1)
    if not finite.all():
        frame = int(np.argmin(finite))
        u = int(np.searchsorted(np.cumsum(utts.lengths), frame, side="right"))
        raise DataError(
            f"{path}: row {int(first_row[u])}, frame {frame - int(utts.offsets[u])}: "
            "non-finite MFCC value (NaN/inf); expected finite floats"
        )


def _digest(x: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(x).view(np.uint8), digest_size=16).digest()


def check_spoken(
    arr: np.ndarray, path: Path | str, max_frames: int = MAX_FRAMES
) -> tuple[Utterances, np.ndarray]:
    """An object array of (frames, 13) arrays -> (distinct utterances, the utterance of each row).

    Rows holding equal arrays (the same object, or the same values) share one utterance."""
    if arr.dtype != object or arr.ndim != 1:
        raise DataError(
            f"{path}: array of dtype {arr.dtype} and shape {arr.shape}; expected a 1-D object array of "
            f"(frames, {N_MFCC}) float arrays"
        )
    by_object: dict[int, int] = {}
    by_content: dict[bytes, int] = {}
    uniq: list[np.ndarray] = []
    first_row: list[int] = []
    row_audio = np.empty(len(arr), np.int64)
    for i, x in enumerate(arr):
        u = by_object.get(id(x))
        if u is None:
            x32 = _check_utterance(x, i, path, max_frames)
            u = by_content.setdefault(_digest(x32), len(uniq))
            if u == len(uniq):
                uniq.append(x32)
                first_row.append(i)
            by_object[id(x)] = u
        row_audio[i] = u
    utts = Utterances.from_arrays(uniq)
    _check_finite(utts, np.array(first_row, np.int64), path)
    return utts, row_audio


def load_utterances(
    d: Path, split: str, n: int, max_frames: int = MAX_FRAMES
) -> tuple[Utterances, np.ndarray]:
    """The split's utterances from ``spoken_<split>.npy`` (object array) or our pickle-free files."""
    legacy = d / f"spoken_{split}.npy"
    frames_path = d / f"spoken_{split}_frames.npy"
    if legacy.exists() or not frames_path.exists():
        arr = load_npy(legacy, objects=True)
        _check_rows(arr, n, legacy, d / f"written_{split}.npy")
        return check_spoken(arr, legacy, max_frames)
    lengths_path, index_path = d / f"spoken_{split}_lengths.npy", d / f"spoken_{split}_index.npy"
    frames, lengths, index = load_npy(frames_path), load_npy(lengths_path), load_npy(index_path)
    if frames.ndim != 2 or frames.shape[1] != N_MFCC or frames.dtype.kind != "f":
        raise DataError(
            f"{frames_path}: {frames.dtype} array of shape {frames.shape}; expected float (F, 13)"
        )
    lengths = check_int(lengths, lengths_path, 1, max_frames)
    if int(lengths.sum()) != len(frames):
        raise DataError(
            f"{lengths_path}: lengths add up to {lengths.sum()} frames; {frames_path} has {len(frames)}"
        )
    index = check_int(
        _check_rows(index, n, index_path, d / f"written_{split}.npy"), index_path, 0, len(lengths) - 1
    )
    utts = Utterances(frames.astype(np.float32, copy=False), lengths)
    first_row = np.full(len(lengths), -1, np.int64)
    first_row[index[::-1]] = np.arange(len(index))[::-1]
    _check_finite(utts, first_row, frames_path)
    return utts, index


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


def _check_rows(arr: np.ndarray, n: int, path: Path, like: Path) -> np.ndarray:
    if len(arr) != n:
        raise DataError(f"{path}: {len(arr)} rows; expected {n} rows like {like}")
    return arr


# ----------------------------------------------------------------------------- loading
def _load_split(d: Path, split: str, use_digit_labels: bool, max_frames: int) -> SplitData:
    written_path = d / f"written_{split}.npy"
    written = check_written(load_npy(written_path), written_path)
    n = len(written)
    utterances, row_audio = load_utterances(d, split, n, max_frames)
    match_path = d / f"match_{split}.npy"
    match = None
    if split == "train" or match_path.exists():
        match = _check_rows(check_binary(load_npy(match_path), match_path), n, match_path, written_path)
    extra: dict[str, np.ndarray | None] = {}
    names = {"speaker": "speaker_spoken", "utterance": "utterance_spoken", "source": "source_written"}
    if use_digit_labels:
        names.update(digit_written="digit_written", digit_spoken="digit_spoken")
    for key, stem in names.items():
        path = d / f"{stem}_{split}.npy"
        if path.exists():
            bounds = (0, 9) if key.startswith("digit") else (0, None)
            extra[key] = _check_rows(check_int(load_npy(path), path, *bounds), n, path, written_path)
    return SplitData(written, utterances, row_audio, match, **extra)


def load_challenge_dir(
    directory: str | os.PathLike[str], use_digit_labels: bool = True, max_frames: int = MAX_FRAMES
) -> ChallengeData:
    """Load and validate ``directory`` (never modifies it).

    With ``use_digit_labels=False`` no ``digit_*`` file is opened (or even looked up).
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise DataError(f"{d}: is a file; expected a directory holding the challenge .npy files")
    if not d.is_dir():
        raise DataError(f"{d}: dataset directory not found; expected the challenge .npy files in it")
    manifest = None
    if (d / "manifest.json").is_file():
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except ValueError as e:
            raise DataError(f"{d / 'manifest.json'}: corrupt JSON ({e})") from e
    train = _load_split(d, "train", use_digit_labels, max_frames)
    test = _load_split(d, "test", use_digit_labels, max_frames)
    return ChallengeData(d, train, test, manifest)
