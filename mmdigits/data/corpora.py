"""Readers of the raw corpora's own formats: MNIST IDX files and the UCI Spoken Arabic Digit text files."""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmdigits.data.challenge import N_MFCC
from mmdigits.errors import DataError

ARABIC_TEST_SPEAKER_OFFSET = 66  # 66 train speakers: test speaker ids start at 66
ARABIC_TEST_UTTERANCE_OFFSET = 6600  # 6600 train utterances: test utterance ids start at 6600


def read_idx(path: str | os.PathLike[str], expect_ndim: int | None = None) -> np.ndarray:
    """Read a (gzip-compressed) IDX file of uint8 data, validating magic number and dimensions."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: truncated or corrupt gzip file ({e}); expected a complete gzip IDX file"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: bad IDX magic {raw[:4].hex()}; expected 0x000008NN (unsigned byte data)")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: IDX has {ndim} dimensions; expected {expect_ndim}")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    n = int(np.prod(dims))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != n:
        raise DataError(f"{path}: IDX payload has {data.size} bytes; expected {n} for dims {dims}")
    return data.reshape(dims)


# ----------------------------------------------------------------------------- Arabic


def parse_arabic(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Parse a UCI Spoken Arabic Digit file into a list of float32 (frames, 13) arrays (vectorised)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not an ASCII text file ({e}); expected lines of 13 floats") from e
    lines = text.split("\n")
    blank = np.fromiter((not s.strip() for s in lines), bool, len(lines))
    nonblank = ~blank
    starts = nonblank & ~np.concatenate([[False], nonblank[:-1]])
    block_of_line = np.cumsum(starts)[nonblank] - 1
    counts = np.bincount(block_of_line) if block_of_line.size else np.zeros(0, np.int64)
    n_frames = int(nonblank.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text, dtype=np.float32, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
    if values is None or values.size != n_frames * N_MFCC:
        for i in np.flatnonzero(nonblank):
            fields = lines[i].split()
            try:
                [float(x) for x in fields]
            except ValueError:
                raise DataError(
                    f"{path}: line {i + 1}: non-numeric field; expected {N_MFCC} floats"
                ) from None
            if len(fields) != N_MFCC:
                raise DataError(f"{path}: line {i + 1} has {len(fields)} fields; expected {N_MFCC} floats")
        raise DataError(f"{path}: could not parse {n_frames} frames of {N_MFCC} floats")
    if not counts.size:
        raise DataError(f"{path}: no utterance blocks found; expected blocks of {N_MFCC}-float lines")
    frames = values.reshape(n_frames, N_MFCC)
    return np.split(frames, np.cumsum(counts)[:-1])


@dataclass
class AudioCorpus:
    """Utterances of one split: float32 (T, 13) features with digit, speaker and global utterance ids."""

    feats: list[np.ndarray]
    digits: np.ndarray
    speakers: np.ndarray
    utterances: np.ndarray
    speaker_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.feats)

    def subset(self, mask: np.ndarray) -> AudioCorpus:
        idx = np.flatnonzero(mask)
        return AudioCorpus(
            [self.feats[i] for i in idx],
            self.digits[idx],
            self.speakers[idx],
            self.utterances[idx],
            self.speaker_names,
        )


def arabic_metadata(n_blocks: int, split: str, path: Path | str = "") -> tuple[np.ndarray, ...]:
    """digit, speaker, utterance ids for the blocks of an Arabic file (10 reps per speaker, speaker-major)."""
    if n_blocks % 10:
        raise DataError(
            f"{path}: {n_blocks} utterance blocks; expected a multiple of 10 (same count per digit)"
        )
    per_digit = n_blocks // 10
    b = np.arange(n_blocks, dtype=np.int64)
    test = split == "test"
    digit = b // per_digit
    speaker = (b % per_digit) // 10 + (ARABIC_TEST_SPEAKER_OFFSET if test else 0)
    utterance = b + (ARABIC_TEST_UTTERANCE_OFFSET if test else 0)
    return digit, speaker, utterance
