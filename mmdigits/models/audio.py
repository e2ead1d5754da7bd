"""Audio (MFCC sequence) encoders: ``forward(x (B,T,in_dim), lengths (B,)) -> (B, out_dim)``.

All encoders are padding invariant: features of an utterance do not depend on how far (or with what)
the batch is padded past its length. Conv encoders re-zero padded frames after every layer (masked
batch norm), use 'same' padding, track lengths through strides and pool only over valid frames;
recurrent encoders read each row only up to its length (``MaskedRNN``); the transformer uses a key
padding mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import (
    MaskedBatchNorm,
    conv_out_lengths,
    lengths_to_mask,
    masked_frames,
    masked_mean,
    masked_pool,
    pool_width,
)
from .rnn import MaskedRNN


class LSTMEncoder(nn.Module):
    """(Bi)LSTM read up to each row's length (``MaskedRNN``); output = final hidden state(s), optionally
    followed by a dense stack.

    ``out_dim`` = ``mlp_dims[-1]`` if ``mlp_dims`` else ``hidden * (2 if bidirectional else 1)``.
    The seed notebook (LSTM(50) -> BN -> ReLU -> Dropout(.2) -> Dense(256) -> BN -> ReLU -> Dropout(.2)
    -> Dense(128, relu)) is ``LSTMEncoder(hidden=50, mlp_dims=[256, 128])``.
    """

    def __init__(
        self,
        in_dim: int = 13,
        hidden: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        mlp_dims: Sequence[int] | None = None,
        mlp_dropout: float = 0.2,
        batchnorm: bool = True,
        packed: bool = False,
    ) -> None:
        super().__init__()
        self.rnn = MaskedRNN("lstm", in_dim, hidden, num_layers, bidirectional, dropout, packed)
        d = hidden * (2 if bidirectional else 1)
        layers: list[nn.Module] = []
        if mlp_dims:
            layers += [nn.BatchNorm1d(d)] if batchnorm else []
            layers += [nn.ReLU(), nn.Dropout(mlp_dropout)]
            for i, h in enumerate(mlp_dims):
                layers.append(nn.Linear(d, h))
                if i < len(mlp_dims) - 1:
                    layers += [nn.BatchNorm1d(h)] if batchnorm else []
                    layers += [nn.ReLU(), nn.Dropout(mlp_dropout)]
                else:
                    layers.append(nn.ReLU())
                d = h
        self.head = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self.rnn(x, lengths, outputs=False)[1])


class MaskedConv1dStack(nn.Module):
    """Conv1d('same' padding, per-layer stride) -> masked BN -> ReLU -> channel Dropout, exact lengths.

    The convs run as 2-D ones over (B, C, 1, T) in channels-last memory: the (B, T, C) layout the batch
    arrives in, where oneDNN is fastest on CPU (1.15-1.27x for whole models' inference, 1.2x for
    match_accurate's training, against conv1d on the transposed batch). In eval mode without autograd each BN
    is folded into its conv (one op instead of two; same features).
    """

    def __init__(
        self, in_dim: int, channels: Sequence[int], kernel_size: int, strides: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        strides = list(strides) if strides is not None else [1] * len(channels)
        assert len(strides) == len(channels), "one stride per conv layer"
        self.k, self.strides = kernel_size, strides
        dims = [in_dim, *channels]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, s, padding=kernel_size // 2, bias=False)
            for a, b, s in zip(dims[:-1], dims[1:], strides)
        )
        self.norms = nn.ModuleList(MaskedBatchNorm(c) for c in channels)
        self.drop = nn.Dropout2d(dropout)  # whole channels: cheap, and keeps padded frames at zero
        self.out_channels = dims[-1]

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,T,C) -> (B,T',C') with zeros past the new lengths, and the new lengths."""
        x = x.transpose(1, 2)
        x = (x * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)).unsqueeze(2)  # (B,C,1,T)
        folded = not self.training and not torch.is_grad_enabled() and self.norms[0].track_running_stats
        for conv, norm, s in zip(self.convs, self.norms, self.strides):
            weight, bias = norm.fold_into(conv.weight) if folded else (conv.weight, None)
            x = F.conv2d(x, weight.unsqueeze(2), bias, (1, s), (0, conv.padding[0]))
            lengths = conv_out_lengths(lengths, self.k, s, self.k // 2)
            mask = lengths_to_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype)
            # folded: ReLU and mask in place, as no autograd needs the values before them (no dropout in eval)
            x = x.relu_().mul_(mask) if folded else self.drop(torch.relu(norm(x, mask)))
        return x.squeeze(2).transpose(1, 2), lengths


class CNN1dEncoder(nn.Module):
    """Conv1d stack over time + masked pooling over valid frames; ``deltas`` adds the MFCCs' first
    differences as 13 more input channels, ``cmn`` the MFCCs minus their utterance's mean (cepstral mean
    normalisation: a speaker's and a channel's constant offset removed) as 13 more. ``raw=False`` (with
    ``cmn``) drops the MFCCs themselves: the centred MFCCs and their differences are the whole input, so a
    constant offset per utterance cannot change the features. ``cvn`` (with ``cmn``) also divides each centred
    coefficient by its standard deviation over the utterance (cepstral mean and variance normalisation), so a
    gain per coefficient and utterance cannot change them either.

    ``out_dim`` = ``channels[-1]`` (x2 for ``pool='meanmax'``; default 256).
    """

    def __init__(
        self,
        in_dim: int = 13,
        channels: Sequence[int] = (64, 128, 128),
        kernel_size: int = 5,
        strides: Sequence[int] = (2, 2, 1),
        dropout: float = 0.1,
        pool: str = "meanmax",
        deltas: bool = False,
        cmn: bool = False,
        raw: bool = True,
        cvn: bool = False,
    ) -> None:
        super().__init__()
        if not (raw or cmn):
            raise ValueError("CNN1dEncoder: raw=False needs cmn=True (the centred MFCCs replace the MFCCs)")
        if cvn and not cmn:
            raise ValueError("CNN1dEncoder: cvn=True needs cmn=True (it scales the centred MFCCs)")
        self.deltas, self.cmn, self.raw, self.cvn = deltas, cmn, raw, cvn
        width = in_dim * (1 + deltas + (cmn and raw))
        self.convs = MaskedConv1dStack(width, channels, kernel_size, strides, dropout)
        self.pool = pool
        self.out_dim = pool_width(self.convs.out_channels, pool)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        feats = x  # the conv stack zeroes padded frames itself: no mask needed here for the MFCCs alone
        if self.deltas or self.cmn:
            mask = lengths_to_mask(lengths, x.shape[1])
            centred = x - masked_mean(x, mask).unsqueeze(1) if self.cmn else x
            if self.cvn:  # the epsilon keeps sqrt's gradient finite for a one-frame (zero-variance) utterance
                var = masked_mean(centred.square(), mask)
                centred = centred / (var + 1e-8).sqrt().unsqueeze(1)
            feats = masked_frames(x if self.raw else centred, mask, self.deltas)
            if self.cmn and self.raw:
                feats = torch.cat([feats, centred * mask.unsqueeze(-1).to(x.dtype)], dim=-1)
        h, lengths = self.convs(feats, lengths)
        return masked_pool(h, lengths_to_mask(lengths, h.shape[1]), self.pool)


class CRNNEncoder(nn.Module):
    """Conv1d front end (strided to downsample time) + GRU/LSTM read up to each row's length.

    ``pool='last'``: final hidden state(s); ``pool='mean'``: masked mean of the RNN outputs.
    ``out_dim`` = ``hidden * (2 if bidirectional else 1)`` (default 128).
    """

    def __init__(
        self,
        in_dim: int = 13,
        channels: Sequence[int] = (64, 64),
        kernel_size: int = 5,
        strides: Sequence[int] = (1, 2),
        rnn: str = "gru",
        hidden: int = 64,
        num_layers: int = 1,
        bidirectional: bool = True,
        pool: str = "last",
        dropout: float = 0.1,
        packed: bool = False,
    ) -> None:
        super().__init__()
        self.convs = MaskedConv1dStack(in_dim, channels, kernel_size, strides, dropout)
        if pool not in ("last", "mean"):
            raise ValueError(f"unknown rnn pooling {pool!r}")
        self.rnn = MaskedRNN(rnn, self.convs.out_channels, hidden, num_layers, bidirectional, dropout, packed)
        self.pool = pool
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h, lengths = self.convs(x, lengths)
        outputs, last = self.rnn(h, lengths, outputs=self.pool == "mean")
        return last if self.pool == "last" else masked_mean(outputs, lengths_to_mask(lengths, h.shape[1]))


def sinusoidal_positions(T: int, d: int, device: torch.device | None = None) -> Tensor:
    """(T, d) sinusoidal positional encoding (Vaswani et al. 2017)."""
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe


class TransformerEncoder(nn.Module):
    """Linear projection + positional encoding + pre-LN ``nn.TransformerEncoder`` + masked mean pooling.

    ``positional``: 'sinusoidal' (any length) or 'learned' (up to ``max_len`` frames).
    ``out_dim`` = ``d_model`` (default 64).
    """

    def __init__(
        self,
        in_dim: int = 13,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        positional: str = "sinusoidal",
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"unknown positional encoding {positional!r}")
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02) if positional == "learned" else None
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.out_dim = d_model

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        T = x.shape[1]
        mask = lengths_to_mask(lengths, T)
        h = self.proj(x)
        if self.pos is None:
            h = h + sinusoidal_positions(T, h.shape[-1], h.device).to(h.dtype)
        elif self.pos.shape[0] >= T:
            h = h + self.pos[:T]
        else:
            raise ValueError(f"sequence of {T} frames exceeds max_len={self.pos.shape[0]}")
        h = self.encoder(h, src_key_padding_mask=~mask)
        return masked_mean(h, mask)


class CNN2dEncoder(nn.Module):
    """2-D convs over the (T, n_mfcc) map as a 1-channel image, masked over time, masked pooling.

    Each layer: Conv2d('same' padding, stride (time_stride, freq_stride)) -> masked BN -> ReLU -> Dropout2d.
    Per-frame features (channels[-1] x remaining MFCC bins) are pooled over valid frames.
    ``out_dim`` = ``channels[-1] * F'`` (x2 for 'meanmax'); default 64 * 4 * 2 = 512.
    """

    def __init__(
        self,
        in_dim: int = 13,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        time_strides: Sequence[int] = (1, 2, 1),
        freq_strides: Sequence[int] = (1, 2, 2),
        dropout: float = 0.1,
        pool: str = "meanmax",
    ) -> None:
        super().__init__()
        assert len(channels) == len(time_strides) == len(freq_strides), "one stride per conv layer"
        self.k, self.time_strides, self.pool = kernel_size, list(time_strides), pool
        dims, f, p = [1, *channels], in_dim, kernel_size // 2
        self.convs = nn.ModuleList()
        for a, b, st, sf in zip(dims[:-1], dims[1:], time_strides, freq_strides):
            self.convs.append(nn.Conv2d(a, b, kernel_size, (st, sf), padding=p, bias=False))
            f = (f + 2 * p - kernel_size) // sf + 1
        self.norms = nn.ModuleList(MaskedBatchNorm(c) for c in channels)
        self.drop = nn.Dropout2d(dropout)
        self.out_dim = pool_width(dims[-1] * f, pool)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h = (x * lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)).unsqueeze(1)  # (B,1,T,F)
        for conv, norm, s in zip(self.convs, self.norms, self.time_strides):
            h = conv(h)
            lengths = conv_out_lengths(lengths, self.k, s, self.k // 2)
            mask = lengths_to_mask(lengths, h.shape[2])[:, None, :, None].to(h.dtype)
            h = self.drop(torch.relu(norm(h, mask)))
        h = h.permute(0, 2, 1, 3).flatten(2)  # (B, T', C*F')
        return masked_pool(h, lengths_to_mask(lengths, h.shape[1]), self.pool)


class RocketEncoder(nn.Module):
    """MiniRocket-style random convolutions (Dempster et al., KDD 2021) pooled to the proportion of positive
    values (PPV), as an encoder.

    MiniRocket's 84 kernels (length 9, weights -1 with three 2s: every choice of 3 of the 9 taps) are fixed,
    at each of ``dilations``, 'same' zero padding; as in its multivariate form, each (kernel, dilation) reads
    the sum of a random subset of the input channels (1 to 9 of them). Each of these 84 * len(dilations)
    outputs is normalised over valid frames (masked batch norm), compared with ``n_thresholds`` fixed
    thresholds at quasi-random quantiles of a standard normal (in place of MiniRocket's biases, quantiles of
    training outputs), and pooled to the share of valid frames above each. The features are standardised
    (batch norm) for the head, as MiniRocket standardises them for its ridge classifier.

    ``tau=0`` (default) is MiniRocket: hard PPV, fixed features, only the output norm and the head learn, and
    no gradient reaches the input. ``tau > 0`` makes the step a sigmoid of that width, so the masked norm's
    learned scale and shift train too (1.5x the training time; no better on validation, as the record
    experiments/audio_only/README.md says).

    ``out_dim`` = 84 * len(dilations) * n_thresholds (default 84 * 7 * 4 = 2352).
    """

    def __init__(
        self,
        in_dim: int = 13,
        dilations: Sequence[int] = (1, 2, 3, 4, 6, 8, 11),
        n_thresholds: int = 4,
        tau: float = 0.0,
        deltas: bool = False,
    ) -> None:
        super().__init__()
        self.deltas, self.dilations, self.tau = deltas, [int(d) for d in dilations], tau
        self.input_gradient = tau > 0  # the contract tests check for gradient leaks only where one flows
        width = in_dim * (1 + deltas)
        taps = torch.combinations(torch.arange(9), 3)  # (84, 3)
        pattern = torch.full((len(taps), 9), -1.0).scatter_(1, taps, 2.0)
        most = min(width, 9)
        weights = []
        for _ in self.dilations:
            n_ch = torch.pow(2.0, torch.rand(len(taps)) * math.log2(most + 1)).floor().clamp(1, most)
            chosen = torch.rand(len(taps), width).argsort(1) < n_ch[:, None]  # a random n_ch-subset each
            weights.append(pattern[:, None, :] * chosen[:, :, None])
        self.register_buffer("weight", torch.stack(weights))  # (D, 84, C, 9)
        k = len(self.dilations) * len(taps)
        golden = (1 + math.sqrt(5)) / 2
        q = (torch.arange(1, k * n_thresholds + 1, dtype=torch.float64) * golden) % 1
        self.register_buffer("thresholds", torch.special.ndtri(q.clamp(0.02, 0.98)).float().view(k, -1))
        self.norm = MaskedBatchNorm(k, affine=tau > 0)
        self.out_dim = k * n_thresholds
        self.out_norm = nn.BatchNorm1d(self.out_dim)  # standardised, as MiniRocket's ridge reads its features

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, x.shape[1])
        x = masked_frames(x, mask, self.deltas).transpose(1, 2)
        convs = [
            F.conv1d(x, w.to(x.dtype), padding=4 * d, dilation=d) for w, d in zip(self.weight, self.dilations)
        ]
        z = self.norm(torch.cat(convs, dim=1), mask[:, None, :].to(x.dtype))  # (B, K, T)
        thresholds = self.thresholds[None, :, :, None].to(z.dtype)
        share = 1.0 / lengths.clamp_min(1).to(z.dtype)[:, None]  # each valid frame's share of its utterance
        if self.tau > 0:
            above = torch.sigmoid((z.unsqueeze(2) - thresholds) / self.tau).flatten(1, 2)
            ppv = torch.bmm(above, (mask.to(z.dtype) * share).unsqueeze(-1)).squeeze(-1)
        else:
            with torch.no_grad():  # MiniRocket's fixed features: nothing before the output norm learns
                z = z.masked_fill(~mask[:, None, :], float("-inf"))  # padded frames count as below
                ppv = (z.unsqueeze(2) > thresholds).sum(-1, dtype=torch.int32).flatten(1).to(z.dtype) * share
        return self.out_norm(ppv)
