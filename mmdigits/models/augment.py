"""Training-time augmentations of normalised batches: images (B,1,28,28), audio (B,T,13) zero past length."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(image: Tensor, shift: int) -> Tensor:
    """Translate the batch by up to ``shift`` pixels (pad, then crop at one random offset)."""
    padded = F.pad(image, (shift, shift, shift, shift))
    dx, dy = torch.randint(0, 2 * shift + 1, (2,)).tolist()
    return padded[:, :, dy : dy + image.shape[2], dx : dx + image.shape[3]]


def time_mask(audio: Tensor, lengths: Tensor, width: int) -> Tensor:
    """SpecAugment-style: zero one block of up to ``width`` frames inside each utterance (at least one frame
    of every utterance is kept)."""
    t = torch.arange(audio.shape[1], device=audio.device)
    w = torch.randint(0, width + 1, (audio.shape[0], 1), device=audio.device)
    w = torch.minimum(w, (lengths.unsqueeze(1) - 1).clamp(min=0))
    start = (torch.rand(audio.shape[0], 1, device=audio.device) * (lengths.unsqueeze(1) - w)).long()
    keep = ~((t >= start) & (t < start + w))
    return audio * keep.unsqueeze(-1)
