"""The Dataset the loaders read, and the one builder of the batch contract (docs/interfaces.md).

A split lives in memory as uint8 images and its distinct utterances concatenated (``Utterances``); a batch
pads only its own rows, to its longest row (or ``pad_to``), with no per-item Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdigits.data.challenge import N_MFCC, SplitData


def pad_utterances(
    frames: Tensor, offsets: Tensor, lengths: Tensor, n_frames: int | None = None
) -> tuple[Tensor, Tensor]:
    """Utterances ``frames[offsets[b] : offsets[b] + lengths[b]]`` as a zero-padded (B, T, 13) batch and their
    lengths (clipped to ``n_frames`` when given; else T is the longest)."""
    T = int(n_frames or (int(lengths.max()) if len(lengths) else 1))
    lengths = lengths.clamp_max(T)
    t = torch.arange(T)
    valid = t[None, :] < lengths[:, None]
    pos = torch.where(valid, offsets[:, None] + t[None, :], 0)
    if not len(frames):
        return frames.new_zeros(len(lengths), T, N_MFCC), lengths
    audio = frames.index_select(0, pos.reshape(-1)).view(len(lengths), T, frames.shape[1])
    return audio * valid.unsqueeze(-1).to(frames.dtype), lengths


def make_batch(
    images: Tensor | np.ndarray | None = None,
    audio: tuple[Tensor, Tensor] | None = None,
    index: Tensor | None = None,
    **labels: Tensor | None,
) -> dict[str, Tensor]:
    """A batch per docs/interfaces.md from raw uint8 images (B, 784) or (B, 28, 28), padded audio and
    lengths, row indices and labels (``target``, ``image_digit``, ``audio_digit``; None ones are left out)."""
    batch: dict[str, Tensor] = {}
    if images is not None:
        images = torch.as_tensor(images)
        batch["image"] = images.reshape(len(images), 1, 28, 28).float()
    if audio is not None:
        batch["audio"], batch["lengths"] = audio
    size = len(next(iter(batch.values())))
    batch["index"] = torch.arange(size) if index is None else index
    batch.update({k: v for k, v in labels.items() if v is not None})
    return batch


@dataclass
class SplitTensors:
    """A split as tensors: images uint8 (n, 784), the utterances' frames (F, 13), offsets and lengths (U,),
    ``row_audio`` (n,) the utterance of each row, ``audio_digit`` (U,) the digit of each utterance (-1 for an
    utterance no row uses; None without digit labels)."""

    images: Tensor
    frames: Tensor
    offsets: Tensor
    lengths: Tensor
    row_audio: np.ndarray
    audio_digit: np.ndarray | None

    @classmethod
    def from_split(cls, split: SplitData) -> SplitTensors:
        utts = split.utterances
        digit = None
        if split.digit_spoken is not None:
            digit = np.full(len(utts), -1, np.int64)
            digit[split.row_audio] = split.digit_spoken
        return cls(
            torch.from_numpy(np.ascontiguousarray(split.written)),
            torch.from_numpy(utts.frames),
            torch.from_numpy(utts.offsets),
            torch.from_numpy(utts.lengths),
            split.row_audio,
            digit,
        )

    def audio(self, utterances: Tensor, n_frames: int | None = None) -> tuple[Tensor, Tensor]:
        return pad_utterances(self.frames, self.offsets[utterances], self.lengths[utterances], n_frames)

    def audio_stats(self, aud: np.ndarray) -> tuple[Tensor, Tensor]:
        """Per-coefficient mean/std over all real frames of the rows whose utterances are ``aud``."""
        uses = np.bincount(aud, minlength=len(self.lengths)).astype(np.float64)
        frames = self.frames.numpy()
        offsets = self.offsets.numpy()
        sums = (
            np.add.reduceat(frames, offsets, axis=0, dtype=np.float64) if len(frames) else np.zeros((0, 13))
        )
        squares = (
            np.add.reduceat(np.square(frames, dtype=np.float64), offsets, axis=0) if len(frames) else sums
        )
        n = float(uses @ self.lengths.numpy())
        mean = uses @ sums / n
        var = np.maximum(uses @ squares / n - mean**2, 1e-12)
        return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float()

    def image_stats(self, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        """Mean/std of the 0..1 pixels of the images ``rows`` (exact, via a 256-bin histogram)."""
        hist = np.bincount(self.images[torch.from_numpy(rows)].numpy().ravel(), minlength=256)
        v = np.arange(256) / 255.0
        mean = (hist * v).sum() / hist.sum()
        std = np.sqrt(max((hist * v**2).sum() / hist.sum() - mean**2, 1e-12))
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


class BatchDataset(Dataset):
    """``ds[index_tensor]`` returns a collated batch dict (see docs/interfaces.md). Use with
    ``DataLoader(ds, batch_size=None, sampler=<batch sampler>)``."""

    def __init__(
        self,
        t: SplitTensors,
        rows: np.ndarray,
        aud: np.ndarray,
        target: np.ndarray | None,
        image_digit: np.ndarray | None = None,
        audio_digit: np.ndarray | None = None,
        pad_to: int | None = None,
    ) -> None:
        self.t = t
        self.rows = torch.from_numpy(np.asarray(rows, np.int64))
        self.aud = torch.from_numpy(np.asarray(aud, np.int64))
        self.target = None if target is None else torch.from_numpy(np.asarray(target))
        self.image_digit = (
            None if image_digit is None else torch.from_numpy(np.asarray(image_digit, np.int64))
        )
        self.audio_digit = (
            None if audio_digit is None else torch.from_numpy(np.asarray(audio_digit, np.int64))
        )
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        """Frames of every row (for bucketing)."""
        return self.t.lengths[self.aud].numpy()

    def __getitem__(self, idx: Tensor | list[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        rows = self.rows[idx]
        return make_batch(
            images=self.t.images[rows],
            audio=self.t.audio(self.aud[idx], self.pad_to),
            index=rows,
            target=None if self.target is None else self.target[idx],
            image_digit=None if self.image_digit is None else self.image_digit[idx],
            audio_digit=None if self.audio_digit is None else self.audio_digit[idx],
        )
