"""InceptionTime (Ismail Fawaz et al., 2020) as a masked audio encoder: ``forward(x (B,T,in_dim), lengths
(B,)) -> (B, out_dim)``, padding invariant like every encoder in ``audio.py``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MaskedBatchNorm, lengths_to_mask, masked_frames, masked_pool, pool_width


class InceptionModule(nn.Module):
    """One InceptionTime module: a 1x1 bottleneck, parallel 'same' convs of several widths on it, and a
    3-frame max pool -> 1x1 conv on the input; concatenated, masked BN, ReLU. Works on (B, C, 1, T) in
    channels-last memory, as ``audio.MaskedConv1dStack`` (2.5x faster than conv1d for these kernels on CPU).
    Padded frames never win the max pool (they are -inf there), so features stay padding invariant."""

    def __init__(self, in_c: int, filters: int, kernel_sizes: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        assert all(k % 2 for k in kernel_sizes), "odd kernel sizes only ('same' padding, symmetric)"
        squeeze = in_c > bottleneck
        self.bottleneck = nn.Conv2d(in_c, bottleneck, 1, bias=False) if squeeze else nn.Identity()
        width = bottleneck if squeeze else in_c
        self.convs = nn.ModuleList(
            nn.Conv2d(width, filters, (1, k), padding=(0, k // 2), bias=False) for k in kernel_sizes
        )
        self.pool_conv = nn.Conv2d(in_c, filters, 1, bias=False)
        self.out_channels = filters * (len(kernel_sizes) + 1)
        self.norm = MaskedBatchNorm(self.out_channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, C, 1, T) zero where mask (B, 1, 1, T) is 0."""
        pad = mask == 0
        v = F.max_pool1d(torch.where(pad, float("-inf"), x).squeeze(2), 3, 1, 1).unsqueeze(2)
        pooled = torch.where(pad, 0.0, v).contiguous(memory_format=torch.channels_last)  # for the 1x1 conv
        b = self.bottleneck(x)
        y = torch.cat([conv(b) for conv in self.convs] + [self.pool_conv(pooled)], dim=1)
        return torch.relu(self.norm(y, mask))


class InceptionStage(nn.Module):
    """Inception modules with a residual shortcut (1x1 conv -> masked BN) around them, added before a ReLU."""

    def __init__(
        self, in_c: int, n_modules: int, filters: int, kernel_sizes: Sequence[int], bottleneck: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        c = in_c
        for _ in range(n_modules):
            self.blocks.append(InceptionModule(c, filters, kernel_sizes, bottleneck))
            c = self.blocks[-1].out_channels
        self.shortcut = nn.Conv2d(in_c, c, 1, bias=False)
        self.shortcut_norm = MaskedBatchNorm(c)
        self.out_channels = c

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = x
        for block in self.blocks:
            h = block(h, mask)
        return torch.relu(h + self.shortcut_norm(self.shortcut(x), mask))


class InceptionEncoder(nn.Module):
    """InceptionTime (Ismail Fawaz et al., 2020) over MFCC frames, masked: ``depth`` inception modules at the
    full frame rate in stages of ``residual_every``, each stage with a residual shortcut, channel dropout,
    then masked pooling over valid frames. ``deltas`` adds the MFCCs' first differences as 13 more input
    channels. InceptionTime's kernels are 10, 20 and 40 frames long, for longer series than these 4-93 frame
    utterances; here they are odd, for symmetric 'same' padding.

    ``out_dim`` = ``filters * (len(kernel_sizes) + 1)`` (x2 for ``pool='meanmax'``; default 128 * 2 = 256).
    """

    def __init__(
        self,
        in_dim: int = 13,
        filters: int = 32,
        kernel_sizes: Sequence[int] = (9, 19, 39),
        bottleneck: int = 32,
        depth: int = 6,
        residual_every: int = 3,
        dropout: float = 0.0,
        pool: str = "meanmax",
        deltas: bool = False,
    ) -> None:
        super().__init__()
        assert depth % residual_every == 0, "depth must be a whole number of residual stages"
        self.deltas, self.pool = deltas, pool
        c = in_dim * (1 + deltas)
        self.stages = nn.ModuleList()
        for _ in range(depth // residual_every):
            self.stages.append(InceptionStage(c, residual_every, filters, kernel_sizes, bottleneck))
            c = self.stages[-1].out_channels
        self.drop = nn.Dropout2d(dropout)
        self.out_dim = pool_width(c, pool)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, x.shape[1])
        x = masked_frames(x, mask, self.deltas).transpose(1, 2).unsqueeze(2)  # (B, C, 1, T), channels-last
        fmask = mask[:, None, None, :].to(x.dtype)
        for stage in self.stages:
            x = stage(x, fmask)
        return masked_pool(self.drop(x).squeeze(2).transpose(1, 2), mask, self.pool)
