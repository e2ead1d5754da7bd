"""Media files a user hands us: pictures of digits and recordings.

Pictures become MNIST-style 28x28 images (white digit on black, 20 px box, centred) the way MNIST's
were made: greyscale, the digit's bounding box scaled (aspect kept) so its longest side is 20 px, then
pasted into a 28x28 frame so that its centre of mass sits at the frame centre. Recordings (WAV) become
13 MFCCs per 10 ms frame with librosa.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmdigits.data.challenge import N_MFCC
from mmdigits.errors import DataError, MMDigitsError

SIZE, BOX = 28, 20
INK_THRESHOLD = 0.1  # fraction of the image's contrast range that counts as ink when cropping
# Files a user hands us are bounded before they are decoded: a small PNG can claim billions of pixels
# (a decompression bomb) and a WAV header any length.
MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel photo of a digit is plenty
MAX_RECORDING_SECONDS = 30.0  # a spoken digit lasts about a second
MAX_FILE_BYTES = 200 * 2**20


def _greyscale(img: Image.Image) -> np.ndarray:
    """Float 0..255 greyscale; transparent pixels are composited onto white (paper)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def to_mnist(img: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 (28, 28), white digit on black, converted the way MNIST digits were."""
    a = np.asarray(img, np.float32) if isinstance(img, np.ndarray) else _greyscale(img)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    if a.ndim != 2 or a.size == 0:
        raise MMDigitsError(f"{name}: image has shape {a.shape}; expected a 2-D picture of a digit")
    if np.median(_border(a)) > 127:  # light background: make the digit white on black
        a = 255.0 - a
    a = np.clip(a - np.median(_border(a)), 0, None)  # background level -> 0
    if a.max() <= 0:
        raise MMDigitsError(f"{name}: the image is empty (a single colour); expected a drawn digit")
    a = a * (255.0 / a.max())
    ys, xs = np.nonzero(a > INK_THRESHOLD * 255)
    a = a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = a.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(a.astype(np.uint8)).resize(size, Image.LANCZOS), np.float32)
    return _paste_centred(small)


def _paste_centred(small: np.ndarray) -> np.ndarray:
    """Paste into a 28x28 frame with the centre of mass at the centre (kept inside the frame)."""
    h, w = small.shape
    total = small.sum()
    cy = (small.sum(1) @ np.arange(h)) / total if total > 0 else (h - 1) / 2
    cx = (small.sum(0) @ np.arange(w)) / total if total > 0 else (w - 1) / 2
    top = int(np.clip(round((SIZE - 1) / 2 - cy), 0, SIZE - h))
    left = int(np.clip(round((SIZE - 1) / 2 - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top : top + h, left : left + w] = small
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_digit_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file and convert it with :func:`to_mnist`; MMDigitsError naming the file if unusable."""
    path = _user_file(path, "image")
    try:
        with Image.open(path) as img:  # reads the header only
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise MMDigitsError(
                    f"{path}: {w}x{h} pixels; expected a picture of at most {MAX_IMAGE_PIXELS:,} pixels"
                )
            img.load()
            return to_mnist(img, str(path))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise MMDigitsError(f"{path}: not a readable image ({err}); expected a PNG/JPEG of a digit") from err


def _user_file(path: str | os.PathLike[str], kind: str) -> Path:
    """``path`` when it is a regular file of a sane size; MMDigitsError naming it otherwise."""
    path = Path(path)
    a = "an" if kind[0] in "aeiou" else "a"
    if path.is_dir():
        raise MMDigitsError(f"{path}: is a directory; expected {a} {kind} file")
    if not path.is_file():
        raise MMDigitsError(f"{path}: {kind} file not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise MMDigitsError(
            f"{path}: {path.stat().st_size:,} bytes; expected {a} {kind} file of at most 200 MiB"
        )
    return path


def save_png(arr: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 (28, 28) or (784,) image as PNG (handy for tests and notebooks)."""
    Image.fromarray(np.asarray(arr, np.uint8).reshape(SIZE, SIZE)).save(path)
    return Path(path)


# ----------------------------------------------------------------------------- recordings


@dataclass(frozen=True)
class MfccSettings:
    """MFCC settings for FSDD: 13 coefficients, 10 ms hop (sr / 100)."""

    sr: int = 8000
    n_mfcc: int = N_MFCC
    n_fft: int = 256
    n_mels: int = 40

    @property
    def hop_length(self) -> int:
        return self.sr // 100

    def as_dict(self) -> dict:
        librosa = audio_module("librosa")

        return {
            "sr": self.sr,
            "n_mfcc": self.n_mfcc,
            "n_fft": self.n_fft,
            "n_mels": self.n_mels,
            "hop_length": self.hop_length,
            "librosa": librosa.__version__,
        }


AUDIO_EXTRA = "reading recordings needs librosa and soundfile: pip install 'mmdigits[audio]'"


def audio_module(name: str) -> Any:
    """``librosa`` or ``soundfile`` (the audio extra), or MMDigitsError saying how to install them."""
    if name not in ("librosa", "soundfile"):
        raise ValueError(name)
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise MMDigitsError(f"{AUDIO_EXTRA} ({name} is not installed)") from err


def read_wav(path: str | os.PathLike[str], sr: int) -> np.ndarray:
    """Read a mono WAV file as float32, resampled to ``sr``; DataError if it is not a readable WAV."""
    sf = audio_module("soundfile")

    path = _user_file(path, "WAV")
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise DataError(f"{path}: not a WAV file (header {head[:12]!r}); expected a RIFF/WAVE audio file")
    try:
        info = sf.info(path)
        seconds = info.frames / info.samplerate
        if seconds > MAX_RECORDING_SECONDS:
            raise DataError(
                f"{path}: a recording of {seconds:,.0f} s; expected a spoken digit of at most "
                f"{MAX_RECORDING_SECONDS:.0f} s"
            )
        # never more samples than the limit allows, whatever the header claims
        y, file_sr = sf.read(
            path, frames=int(MAX_RECORDING_SECONDS * info.samplerate), dtype="float32", always_2d=True
        )
    except DataError:
        raise
    except Exception as e:  # libsndfile errors have several types
        raise DataError(f"{path}: unreadable WAV file ({e}); expected PCM RIFF/WAVE audio") from e
    if y.shape[0] == 0:
        raise DataError(f"{path}: WAV file has no samples; expected a non-empty recording")
    y = y.mean(axis=1)
    if file_sr != sr:
        y = audio_module("librosa").resample(y, orig_sr=file_sr, target_sr=sr)
    return y.astype(np.float32)


def wav_mfcc(path: str | os.PathLike[str], settings: MfccSettings = MfccSettings()) -> np.ndarray:
    """MFCC of a wav file, float32 (frames, n_mfcc)."""
    librosa = audio_module("librosa")

    y = read_wav(path, settings.sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_fft > len(y) for very short clips
        m = librosa.feature.mfcc(
            y=y,
            sr=settings.sr,
            n_mfcc=settings.n_mfcc,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
            n_mels=settings.n_mels,
        )
    return np.ascontiguousarray(m.T, dtype=np.float32)
