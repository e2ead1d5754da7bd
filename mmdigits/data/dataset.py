"""In-memory tensor views of a split and the batch-producing Dataset (no per-item Python loops)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmdigits.data.challenge import N_MFCC, SplitData


@dataclass
class SplitTensors:
    """A split in memory: images uint8 (n, 1, 28, 28); unique utterances zero-padded in ``bank`` (U, Tmax, 13)
    with ``bank_len`` (U,); ``row_audio`` (n,) maps each row to its utterance in the bank."""

    images: torch.Tensor
    bank: torch.Tensor
    bank_len: torch.Tensor
    row_audio: np.ndarray
    bank_digit: np.ndarray | None  # digit of each bank utterance (None without digit labels)

    @classmethod
    def from_split(cls, split: SplitData) -> SplitTensors:
        n = len(split)
        if split.utterance is not None:
            _, first, inverse = np.unique(split.utterance, return_index=True, return_inverse=True)
        else:  # dedupe by object identity (rows shared by pickling)
            keys: dict[int, int] = {}
            inverse = np.fromiter((keys.setdefault(id(x), len(keys)) for x in split.spoken), np.int64, n)
            first = np.zeros(len(keys), np.int64)
            first[inverse[::-1]] = np.arange(n)[::-1]
        uniq = [split.spoken[i] for i in first]
        lengths = np.array([len(u) for u in uniq], np.int64)
        tmax = int(lengths.max()) if len(lengths) else 1
        bank = np.zeros((len(uniq), tmax, N_MFCC), np.float32)
        if uniq:
            bank[np.arange(tmax)[None, :] < lengths[:, None]] = np.concatenate(uniq)
        images = torch.from_numpy(np.ascontiguousarray(split.written).reshape(n, 1, 28, 28))
        digit = None if split.digit_spoken is None else split.digit_spoken[first]
        return cls(images, torch.from_numpy(bank), torch.from_numpy(lengths), inverse.astype(np.int64), digit)

    def audio_stats(self, aud: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-coefficient mean/std over all real frames of the rows whose bank indices are ``aud``."""
        cnt = torch.from_numpy(np.bincount(aud, minlength=len(self.bank)).astype(np.float64))
        bank = self.bank.double()
        n = (cnt * self.bank_len.double()).sum()
        mean = cnt @ bank.sum(1) / n
        var = (cnt @ (bank**2).sum(1) / n - mean**2).clamp_min(1e-12)
        return mean.float(), var.sqrt().float()

    def image_stats(self, img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean/std of the 0..1 pixels of the images ``img`` (exact, via a 256-bin histogram)."""
        hist = np.bincount(
            self.images.view(len(self.images), -1)[torch.from_numpy(img)].numpy().ravel(), minlength=256
        )
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
        return self.t.bank_len[self.aud].numpy()

    def __getitem__(self, idx: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        rows = self.rows[idx]
        u = self.aud[idx]
        lengths = self.t.bank_len[u]
        n_frames = self.pad_to or int(lengths.max())
        if n_frames <= self.t.bank.shape[1]:
            audio = self.t.bank[u, :n_frames]
        else:
            audio = F.pad(self.t.bank[u], (0, 0, 0, n_frames - self.t.bank.shape[1]))
        batch = {
            "image": self.t.images[rows].float(),
            "audio": audio,
            "lengths": lengths.clamp_max(n_frames),
            "index": rows,
        }
        if self.target is not None:
            batch["target"] = self.target[idx]
        if self.image_digit is not None:
            batch["image_digit"] = self.image_digit[idx]
        if self.audio_digit is not None:
            batch["audio_digit"] = self.audio_digit[idx]
        return batch
