"""Fusion heads: ``__init__(in_dims, out_dim, **kw)``; ``forward(feats: list[(B, d_m)]) -> (B, out_dim)``.

Every fusion accepts any number (>= 1) of modality features of any widths; out_dim is 1 for the match
task (binary logit) and 10 for digit tasks. A fusion with per-modality heads also has
``modality_logits(feats)`` and ``combine(modality_logits)`` (forward = their composition), so a caller that
needs the heads' outputs too computes them once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MLP


def _check(feats: Sequence[Tensor], n: int) -> None:
    if len(feats) != n:
        raise ValueError(f"fusion built for {n} modalities got {len(feats)} features")


def agreement_logit(logps: Sequence[Tensor], eps: float = 1e-6) -> Tensor:
    """logit of P = sum_k prod_m p_m[k] from per-modality log-probs (B, K), computed stably in float32.

    P is soft-clamped as eps + (1 - 2 eps) P, so the logit lies in [logit(eps), logit(1-eps)] and the
    gradient never vanishes (a hard clamp would freeze confidently wrong predictions). Returns (B, 1).
    """
    with torch.autocast(device_type=logps[0].device.type, enabled=False):
        log_p = torch.logsumexp(torch.stack([lp.float() for lp in logps]).sum(0), dim=-1)
        log_p = torch.logaddexp(torch.full_like(log_p, math.log(eps)), log_p + math.log1p(-2 * eps))
        return (log_p - torch.log1p(-log_p.exp())).unsqueeze(-1)


class ConcatFusion(nn.Module):
    """Concatenate features -> MLP head (``hidden`` widths, ReLU, dropout) -> out_dim."""

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.2,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.n = len(in_dims)
        self.head = MLP(sum(in_dims), hidden, out_dim, dropout, batchnorm)

    def forward(self, feats: list[Tensor]) -> Tensor:
        _check(feats, self.n)
        return self.head(torch.cat(list(feats), dim=-1))


@dataclass
class FusionOutput:
    """A fusion's logits (B, out_dim) and, for a fusion with per-modality heads, each modality's logits."""

    logits: Tensor
    modality_logits: list[Tensor] | None = None


class AgreementFusion(nn.Module):
    """Per-modality heads, combined at the decision level ("late fusion").

    Each modality m has a head (MLP, ``hidden`` widths) to ``n_classes`` logits, divided by ``temperature``;
    p_m is their softmax (in float32). Then, by the number of outputs:

    * out_dim == 1 with >= 2 modalities (match task): the agreement P = sum_k prod_m p_m[k], i.e. "do the
      modalities name the same class"; forward returns logit(P), soft-clamped to [eps, 1 - eps]. With
      ``calibrate`` (the ``late`` config) a learned affine map a * logit(P) + b follows (a=1, b=0 at init).
    * out_dim > 1 (digit tasks): n_classes is out_dim and forward returns sum_m log p_m (product of experts).
    * out_dim == 1 with one modality: a linear read-out of its log-probs.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        n_classes: int = 10,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        temperature: float = 1.0,
        calibrate: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.n, self.out_dim, self.eps = len(in_dims), out_dim, eps
        self.n_classes = n_classes if out_dim == 1 else out_dim
        self.temperature = temperature
        self.heads = nn.ModuleList(MLP(d, hidden, self.n_classes, dropout) for d in in_dims)
        self.mode = "poe" if out_dim != 1 else "agree" if self.n >= 2 else "linear"
        if self.mode == "agree" and calibrate:
            self.scale, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
        self.calibrate = self.mode == "agree" and calibrate
        if self.mode == "linear":
            self.readout = nn.Linear(self.n * self.n_classes, out_dim)

    def modality_logits(self, feats: list[Tensor]) -> list[Tensor]:
        """Per-modality class logits (already divided by the temperature), each (B, n_classes)."""
        _check(feats, self.n)
        return [head(f) / self.temperature for head, f in zip(self.heads, feats)]

    def combine(self, modality_logits: list[Tensor]) -> Tensor:
        """The fused logits (B, out_dim) from :meth:`modality_logits`."""
        logps = [F.log_softmax(lg.float(), dim=-1) for lg in modality_logits]  # float32 even under autocast
        if self.mode == "poe":
            return torch.stack(logps).sum(0)
        if self.mode == "linear":
            return self.readout(torch.cat(logps, dim=-1))
        logit = agreement_logit(logps, self.eps)
        return self.scale * logit + self.bias if self.calibrate else logit

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.combine(self.modality_logits(feats))

    def balance_loss(self, modality_logits: list[Tensor]) -> Tensor:
        """Anti-collapse term: KL(batch-mean p_m || uniform) = log K - H(mean_b p_m), averaged over
        modalities. 0 when every class is used equally over the batch, log K when collapsed."""
        losses = []
        for lg in modality_logits:
            p_bar = F.softmax(lg.float(), dim=-1).mean(0)
            losses.append((p_bar * torch.log(p_bar.clamp_min(1e-12))).sum() + math.log(self.n_classes))
        return torch.stack(losses).mean()


class GatedFusion(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017): h_m = tanh(W_m f_m); per-unit gates z from the
    concatenated features (softmax over modalities, or independent sigmoids); h = sum_m z_m * h_m -> head."""

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        dim: int = 128,
        gate: str = "softmax",
        hidden: Sequence[int] = (),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown gate {gate!r}")
        self.n, self.dim, self.gate_type = len(in_dims), dim, gate
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in in_dims)
        self.gate = nn.Linear(sum(in_dims), self.n * dim)
        self.drop = nn.Dropout(dropout)
        self.head = MLP(dim, hidden, out_dim, dropout)

    def gates(self, feats: list[Tensor]) -> Tensor:
        """(B, M, dim) gate values."""
        z = self.gate(torch.cat(list(feats), dim=-1)).view(-1, self.n, self.dim)
        return z.softmax(1) if self.gate_type == "softmax" else torch.sigmoid(z)

    def forward(self, feats: list[Tensor]) -> Tensor:
        _check(feats, self.n)
        h = torch.stack([torch.tanh(p(f)) for p, f in zip(self.proj, feats)], dim=1)
        return self.head(self.drop((self.gates(feats) * h).sum(1)))


class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al. 2018): z_m = [f_m, 1] W_m^(r) for rank-R factors,
    fused = sum_r w_r prod_m z_m^(r) + b (``dim`` wide), then ReLU/dropout -> MLP head -> out_dim."""

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        rank: int = 4,
        dim: int = 64,
        hidden: Sequence[int] = (),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.n = len(in_dims)
        self.factors = nn.ParameterList(nn.Parameter(torch.empty(rank, d + 1, dim)) for d in in_dims)
        for w in self.factors:
            nn.init.xavier_normal_(w)
        self.rank_weights = nn.Parameter(torch.full((1, rank), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.drop = nn.Dropout(dropout)
        self.head = MLP(dim, hidden, out_dim, dropout)

    def forward(self, feats: list[Tensor]) -> Tensor:
        _check(feats, self.n)
        fused = None
        for w, f in zip(self.factors, feats):
            f1 = torch.cat([f, f.new_ones(f.shape[0], 1)], dim=-1)
            z = torch.einsum("bd,rdh->brh", f1, w)
            fused = z if fused is None else fused * z
        h = torch.einsum("or,brh->bh", self.rank_weights, fused) + self.bias
        return self.head(self.drop(torch.relu(h)))
