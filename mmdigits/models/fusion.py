"""Fusion heads: ``__init__(in_dims, out_dim, **kw)``; ``forward(feats: list[(B, d_m)]) -> (B, out_dim)``.

Every fusion accepts any number (>= 1) of modality features of any widths; out_dim is 1 for the match
task (binary logit) and n_classes for digit tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


class _PerModalityHeads(nn.Module):
    """Shared machinery of late/agreement fusion: one MLP head per modality to ``n_classes`` logits."""

    def __init__(
        self, in_dims: Sequence[int], n_classes: int, hidden: Sequence[int], dropout: float, T: float
    ):
        super().__init__()
        self.n, self.n_classes, self.temperature = len(in_dims), n_classes, T
        self.heads = nn.ModuleList(MLP(d, hidden, n_classes, dropout) for d in in_dims)

    def modality_logits(self, feats: list[Tensor]) -> list[Tensor]:
        """Per-modality class logits (already divided by the temperature), each (B, n_classes)."""
        _check(feats, self.n)
        return [head(f) / self.temperature for head, f in zip(self.heads, feats)]

    def modality_logprobs(self, feats: list[Tensor]) -> list[Tensor]:
        # heads run in the autocast dtype; the probabilities are taken in float32
        return [F.log_softmax(lg.float(), dim=-1) for lg in self.modality_logits(feats)]


class LateFusion(_PerModalityHeads):
    """Per-modality heads to ``n_classes`` digit logits, combined at the decision level.

    * out_dim == n_classes: product of experts, sum_m log p_m (a normalised log-posterior up to a constant).
    * out_dim == 1 with >= 2 modalities: learned affine map a * logit(P) + b of the agreement probability
      P = sum_k prod_m p_m[k] (a=1, b=0 at init), i.e. "do the modalities name the same digit".
    * otherwise (e.g. a single modality and out_dim 1): a linear read-out of the concatenated log-probs.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        n_classes: int = 10,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(in_dims, n_classes, hidden, dropout, 1.0)
        self.out_dim, self.eps = out_dim, eps
        self.mode = "poe" if out_dim == n_classes else "agree" if out_dim == 1 and self.n >= 2 else "linear"
        if self.mode == "agree":
            self.scale, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
        elif self.mode == "linear":
            self.readout = nn.Linear(self.n * n_classes, out_dim)

    def forward(self, feats: list[Tensor]) -> Tensor:
        logps = self.modality_logprobs(feats)
        if self.mode == "poe":
            return torch.stack(logps).sum(0)
        if self.mode == "agree":
            return self.scale * agreement_logit(logps, self.eps) + self.bias
        return self.readout(torch.cat(logps, dim=-1))


class AgreementFusion(_PerModalityHeads):
    """Shared-latent agreement (match task): p_m = softmax(head_m(f_m) / temperature) over ``n_latent``
    classes and P(match) = sum_k prod_m p_m[k]; forward returns logit(P) (soft-clamped to [eps, 1-eps],
    float32 even under autocast).

    With out_dim != 1 (digit tasks) n_latent is set to out_dim and forward returns sum_m log p_m (product of
    experts). With a single modality and out_dim 1 there is nothing to agree with: a linear read-out of the
    log-probs is used instead.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        n_latent: int = 10,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        temperature: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        n_latent = n_latent if out_dim == 1 else out_dim
        super().__init__(in_dims, n_latent, hidden, dropout, temperature)
        self.out_dim, self.eps = out_dim, eps
        self.readout = nn.Linear(n_latent, 1) if out_dim == 1 and self.n == 1 else None

    def forward(self, feats: list[Tensor]) -> Tensor:
        logps = self.modality_logprobs(feats)
        if self.out_dim != 1:
            return torch.stack(logps).sum(0)
        if self.readout is not None:
            return self.readout(logps[0])
        return agreement_logit(logps, self.eps)

    def balance_loss(self, feats: list[Tensor]) -> Tensor:
        """Anti-collapse term: KL(batch-mean p_m || uniform) = log K - H(mean_b p_m), averaged over
        modalities. 0 when every latent class is used equally over the batch, log K when collapsed."""
        losses = []
        for lp in self.modality_logprobs(feats):
            p_bar = lp.exp().mean(0)
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
