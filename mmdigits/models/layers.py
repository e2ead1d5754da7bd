"""Shared building blocks: length masks, masked pooling, masked batch norm, MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def lengths_to_mask(lengths: Tensor, T: int) -> Tensor:
    """Bool mask (B, T), True on the first ``lengths[b]`` frames of row b."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


def conv_out_lengths(lengths: Tensor, kernel_size: int, stride: int = 1, padding: int = 0) -> Tensor:
    """Exact output lengths of a 1-D conv: floor((L + 2p - k) / s) + 1."""
    return torch.div(lengths + 2 * padding - kernel_size, stride, rounding_mode="floor") + 1


def masked_frames(x: Tensor, mask: Tensor, deltas: bool = False) -> Tensor:
    """x (B, T, C) zeroed where mask (B, T) is False -> (B, T, C); with ``deltas``, (B, T, 2C): its first
    differences (x[t+1] - x[t-1]) / 2 as C more channels (frames outside an utterance count as zero)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    x = x * m
    if not deltas:
        return x
    padded = F.pad(x, (0, 0, 1, 1))
    return torch.cat([x, (padded[:, 2:] - padded[:, :-2]) * (0.5 * m)], dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, T, C) over the valid frames of mask (B, T) -> (B, C)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of x (B, T, C) over the valid frames of mask (B, T) -> (B, C); rows need >= 1 valid frame."""
    return x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)


def masked_pool(x: Tensor, mask: Tensor, mode: str = "meanmax") -> Tensor:
    """'mean', 'max' or 'meanmax' (concatenation, width 2C) pooling over valid frames."""
    if mode == "mean":
        return masked_mean(x, mask)
    if mode == "max":
        return masked_max(x, mask)
    if mode == "meanmax":
        return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)
    raise ValueError(f"unknown pooling mode {mode!r}")


def pool_width(channels: int, mode: str) -> int:
    return 2 * channels if mode == "meanmax" else channels


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` with a faster path where no gradient is needed (inference, validation).

    There it takes the max of the four strided sub-grids: the same values, several times faster on CPU for
    the few-channel maps of the image encoders. Training keeps ``max_pool2d``, whose gradient goes to one
    element of a tied window (``torch.maximum`` would split it, and zero backgrounds tie often).
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor mode: an odd last row/column is dropped
        top, bottom = x[..., 0:h:2, 0:w:2], x[..., 1:h:2, 0:w:2]
        top_r, bottom_r = x[..., 0:h:2, 1:w:2], x[..., 1:h:2, 1:w:2]
        return torch.maximum(torch.maximum(top, top_r), torch.maximum(bottom, bottom_r))


def conv_maxpool2x2(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``max_pool2d(conv(x), 2)`` as one stride-2 convolution over the four pooling phases (no gradient).

    Each pooled output is the max of four conv outputs at offsets (a, b) in {0, 1}^2; a (k+1)x(k+1)
    kernel holding the k x k one at offset (a, b), applied with stride 2, gives phase (a, b). The
    bias is the same in every phase, so it is added after the max. For LeNet's first layer (one input
    channel, where oneDNN's stride-1 kernels are slow) it ran about 1.3x faster than conv then pool,
    though it does 1.44x the multiply-adds. Same values up to float rounding; floor mode, as ``max_pool2d``.
    """
    k = conv.kernel_size
    assert conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1, "stride-1 dense conv only"
    assert conv.padding_mode == "zeros" and not isinstance(conv.padding, str), "numeric zero padding only"
    w = conv.weight
    phases = w.new_zeros(2, 2, *w.shape[:2], k[0] + 1, k[1] + 1)
    for a in (0, 1):
        for b in (0, 1):
            phases[a, b, :, :, a : a + k[0], b : b + k[1]] = w
    phases = phases.flatten(0, 2)
    if x.is_contiguous(memory_format=torch.channels_last):
        phases = phases.contiguous(memory_format=torch.channels_last)
    ph, pw = conv.padding
    y = F.conv2d(F.pad(x, (pw, pw, ph, ph)) if ph or pw else x, phases, stride=2)
    y = y.unflatten(1, (4, w.shape[0]))
    y = torch.maximum(torch.maximum(y[:, 0], y[:, 1]), torch.maximum(y[:, 2], y[:, 3]))
    return y if conv.bias is None else y.add_(conv.bias.view(1, -1, 1, 1))


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over dim 1 of any (B, C, ...) tensor whose batch statistics use only valid positions.

    ``mask`` is a float 0/1 tensor broadcastable to x with size 1 in dim 1; the output is re-zeroed
    where mask == 0, so padded frames never leak into statistics or into later layers.
    """

    def fold_into(self, conv_weight: Tensor) -> tuple[Tensor, Tensor]:
        """Weight and bias of the conv (no bias) -> this norm, as one conv, from the running statistics."""
        scale = torch.rsqrt(self.running_var + self.eps)
        scale = scale * self.weight if self.affine else scale
        shift = -self.running_mean * scale + (self.bias if self.affine else 0.0)
        return conv_weight * scale.view(-1, *[1] * (conv_weight.dim() - 1)), shift

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        if not self.training and self.track_running_stats:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps)
            return y * mask
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = mask.expand_as(x[:, :1]).sum().clamp_min(2.0)
        xm = x * mask
        mean = xm.sum(dims) / n
        var = ((xm * xm).sum(dims) / n - mean * mean).clamp_min(0.0)  # one pass: fewer full-size ops
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), mom)
                unbiased = var.detach() * n / (n - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), mom)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0.0)
        return torch.addcmul(shift.view(shape), xm, scale.view(shape)) * mask


class MLP(nn.Sequential):
    """Linear -> [BN] -> ReLU -> Dropout for each width in ``hidden``, then an optional final Linear.

    ``out_dim`` is ``out_dim`` if given, else ``hidden[-1]`` (or ``in_dim`` when there are no layers).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (),
        out_dim: int | None = None,
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h)]
            layers += [nn.BatchNorm1d(h)] if batchnorm else []
            layers += [nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        super().__init__(*layers)
        self.out_dim = d
