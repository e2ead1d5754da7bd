"""Image encoders: ``forward(x (B,1,28,28) normalised) -> (B, out_dim)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmdigits.models.layers import MaxPool2x2, conv_maxpool2x2


class CNNEncoder(nn.Module):
    """The seed notebook's MNIST CNN (widths configurable).

    Conv(1,c1,3) -> BN -> ReLU -> Dropout(.1) -> Conv(c1,c2,3) -> BN -> ReLU -> MaxPool2 -> Dropout(.25)
    -> Flatten -> BN -> Linear(c2*12*12 -> hidden) -> ReLU -> Dropout(.5).  ``out_dim`` = ``hidden`` (128).
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: Sequence[float] = (0.1, 0.25, 0.5),
        image_size: int = 28,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        d1, d2, d3 = dropout
        side = (image_size - 4) // 2
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3), nn.BatchNorm2d(c1), nn.ReLU(inplace=True), nn.Dropout(d1),
            nn.Conv2d(c1, c2, 3), nn.BatchNorm2d(c2), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(d2),
            nn.Flatten(), nn.BatchNorm1d(c2 * side * side), nn.Linear(c2 * side * side, hidden),
            nn.ReLU(inplace=True), nn.Dropout(d3),
        )  # fmt: skip
        self.out_dim = hidden

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LeNetEncoder(nn.Module):
    """LeNet-5 style: Conv(1,6,5,pad 2) -> pool -> Conv(6,16,5) -> pool -> FC 120 -> FC 84.

    ``act``: 'relu' (with max pooling) or 'tanh' (with average pooling, as in 1998). ``out_dim`` = 84.
    """

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        A = {"relu": nn.ReLU, "tanh": nn.Tanh}[act]

        def stage() -> list[nn.Module]:
            # max pooling commutes with ReLU: pooling first leaves ReLU a quarter of the values (same output)
            return [MaxPool2x2(), A()] if act == "relu" else [A(), nn.AvgPool2d(2)]

        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), *stage(),
            nn.Conv2d(6, 16, 5), *stage(),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), A(), nn.Linear(120, 84), A(),
        )  # fmt: skip
        self.act = act
        self.out_dim = 84

    def forward(self, x: Tensor) -> Tensor:
        if self.act == "relu" and not torch.is_grad_enabled():
            # inference: first conv and its pooling as one conv (conv_maxpool2x2), then ReLU onwards
            return self.net[2:](conv_maxpool2x2(x, self.net[0]))
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a (projected when needed) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNetEncoder(nn.Module):
    """Small ResNet: 3x3 stem + stages of basic blocks (first block of each stage strided) + global avg pool.

    Defaults: stem 16 ch at 28x28, stages 32/64/128 at 14/7/4 px, one block each (~0.30 M params).
    ``out_dim`` = ``channels[-1]`` (128).
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1),
        strides: Sequence[int] = (2, 2, 2),
        stem_channels: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(1, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        ]
        c = stem_channels
        for c_out, n, s in zip(channels, blocks, strides):
            for i in range(n):
                layers.append(BasicBlock(c, c_out, s if i == 0 else 1))
                c = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvEncoder(nn.Module):
    """VGG-style: stages of 3x3 conv-BN-ReLU (widths ``spec``, one list per stage) with 2x2 max pooling
    between stages, then flatten -> Linear(``head``) -> BN -> ReLU.

    ``spec=[[8], [16], [32]], head=64`` (``conv_fast``, ~0.6 M multiply-adds, about LeNet's cost) and
    ``[[16], [32], [64]], 128`` (``conv``, ~2 M) were chosen for the match and image-only recipes.
    ``out_dim`` = ``head``.
    """

    def __init__(self, spec: Sequence[Sequence[int]] = ((16,), (32,), (64,)), head: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, side = 1, 28
        for i, stage in enumerate(spec):
            for width in stage:
                layers += [
                    nn.Conv2d(c, width, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                c = width
            if i < len(spec) - 1:
                layers.insert(-1, MaxPool2x2())  # before the stage's last ReLU: same output, less work
                side //= 2
        layers += [nn.Flatten(), nn.Linear(c * side * side, head, bias=False), nn.BatchNorm1d(head)]
        self.net = nn.Sequential(*layers, nn.ReLU(inplace=True))
        self.out_dim = head

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
