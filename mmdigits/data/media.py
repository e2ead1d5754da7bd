"""Turn any picture of a digit into an MNIST-style 28x28 image (white digit on black, 20 px box, centred).

MNIST's recipe: greyscale, the digit's bounding box scaled (aspect kept) so its longest side is 20 px,
then pasted into a 28x28 frame so that its centre of mass sits at the frame centre.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmdigits.errors import MMDigitsError

SIZE, BOX = 28, 20
INK_THRESHOLD = 0.1  # fraction of the image's contrast range that counts as ink when cropping


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
    path = Path(path)
    if not path.is_file():
        raise MMDigitsError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return to_mnist(img, str(path))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MMDigitsError(f"{path}: not a readable image ({err}); expected a PNG/JPEG of a digit") from err


def save_png(arr: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 (28, 28) or (784,) image as PNG (handy for tests and notebooks)."""
    Image.fromarray(np.asarray(arr, np.uint8).reshape(SIZE, SIZE)).save(path)
    return Path(path)
