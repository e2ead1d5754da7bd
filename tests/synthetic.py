"""Tiny, learnable synthetic raw corpora in the real on-disk formats (for tests and smoke runs).

Images are noisy per-digit templates, Arabic MFCC frames are noisy per-digit mean vectors and FSDD wavs are
digit-dependent tones, so a model can beat chance within a few epochs.
"""

from __future__ import annotations

import gzip
import os
import wave
from pathlib import Path

import numpy as np


def write_idx_gz(path: str | os.PathLike[str], arr: np.ndarray) -> Path:
    """Write a uint8 array as a gzip-compressed IDX file."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">i4").tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(header + arr.tobytes())
    return path


def digit_templates(seed: int = 1234) -> np.ndarray:
    """(10, 28, 28) float templates in [0, 1] (blocky random patterns, one per digit)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((10, 7, 7)) > 0.55).astype(np.float32)
    return np.kron(coarse, np.ones((4, 4), np.float32))


def tiny_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    img = digit_templates()[labels] * 220 + rng.normal(0, 35, (n, 28, 28))
    return np.clip(img, 0, 255).astype(np.uint8), labels


def write_arabic(
    path: str | os.PathLike[str], n_speakers: int, rng: np.random.Generator, reps: int = 10
) -> Path:
    """Arabic-format text: 10 digits x ``n_speakers`` x ``reps`` blocks of 5-30 frames of 13 floats."""
    means = np.random.default_rng(99).normal(0, 2.0, (10, 13))
    lines = ["            "]
    for d in range(10):
        for _ in range(n_speakers * reps):
            frames = means[d] + rng.normal(0, 0.8, (int(rng.integers(5, 31)), 13))
            lines += [" ".join(f"{v:.5g}" for v in row) for row in frames]
            lines.append("            ")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines[:-1]) + "\n")
    return path


def write_tone_wav(
    path: str | os.PathLike[str], digit: int, rng: np.random.Generator, sr: int = 8000
) -> Path:
    """A short 16-bit mono wav whose pitch depends on the digit."""
    n = int(rng.integers(int(0.15 * sr), int(0.35 * sr)))
    t = np.arange(n) / sr
    f = 250 + 120 * digit
    y = 0.5 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.7 * f * t) + rng.normal(0, 0.02, n)
    pcm = (np.clip(y * np.hanning(n), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return Path(path)


def write_tiny_corpora(
    root: str | os.PathLike[str],
    *,
    n_train_images: int = 300,
    n_test_images: int = 100,
    arabic_train_speakers: int = 10,
    arabic_test_speakers: int = 3,
    fsdd_speakers: tuple[str, ...] = ("george", "jackson", "yweweler"),
    fsdd_per_digit: int = 2,
    seed: int = 0,
) -> Path:
    """Write tiny MNIST / Arabic / FSDD corpora under ``root`` in the real layouts; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for n, stem in ((n_train_images, "train"), (n_test_images, "t10k")):
        images, labels = tiny_images(n, rng)
        write_idx_gz(root / "mnist" / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx_gz(root / "mnist" / f"{stem}-labels-idx1-ubyte.gz", labels)
    write_arabic(root / "arabic_digits" / "Train_Arabic_Digit.txt", arabic_train_speakers, rng)
    write_arabic(root / "arabic_digits" / "Test_Arabic_Digit.txt", arabic_test_speakers, rng)
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True, exist_ok=True)
    for d in range(10):
        for s in fsdd_speakers:
            for i in range(fsdd_per_digit):
                write_tone_wav(rec / f"{d}_{s}_{i}.wav", d, rng)
    return root


CHALLENGE_FILES = ("written_train", "spoken_train", "match_train", "written_test", "spoken_test")
LABEL_FILES = tuple(
    f"{stem}_{split}"
    for stem in ("digit_written", "digit_spoken", "speaker_spoken", "utterance_spoken")
    for split in ("train", "test")
) + ("match_test",)


def spoken_objects(built: str | os.PathLike[str], split: str) -> np.ndarray:
    """A build's utterances of ``split`` as the original challenge stores them: an object array with one
    (frames, 13) float array per row (rows of the same utterance share one object)."""
    d = Path(built)
    frames = np.load(d / f"spoken_{split}_frames.npy")
    lengths = np.load(d / f"spoken_{split}_lengths.npy")
    bank = np.split(frames, np.cumsum(lengths)[:-1])
    index = np.load(d / f"spoken_{split}_index.npy")
    out = np.empty(len(index), dtype=object)
    for i, u in enumerate(index):
        out[i] = bank[u]
    return out


def write_challenge_files(
    built: str | os.PathLike[str], out: str | os.PathLike[str], labels: bool = False
) -> Path:
    """The original challenge's five files (``spoken_*.npy`` as object arrays) made from a build of ours, in
    ``out`` (no manifest: user-owned files). ``labels`` adds match_test and the digit, speaker and utterance
    files, as a user with labelled files would have them."""
    src, dst = Path(built), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    for name in CHALLENGE_FILES + (LABEL_FILES if labels else ()):
        if name.startswith("spoken_"):
            np.save(dst / f"{name}.npy", spoken_objects(src, name.split("_")[1]), allow_pickle=True)
        else:
            np.save(dst / f"{name}.npy", np.load(src / f"{name}.npy"))
    return dst
