"""The fusions' parts on a few numbers: gates, the low-rank product, the heads' layers and defaults, and the
messages of what they refuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmdigits.models.fusion import AgreementFusion, ConcatFusion, GatedFusion, LowRankTensorFusion


def layers(module: nn.Module) -> list[type]:
    return [type(m) for m in module]


def test_a_fusion_refuses_the_wrong_number_of_features():
    with pytest.raises(ValueError, match="fusion built for 2 modalities got 1 features"):
        ConcatFusion([3, 4], 1)([torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="unknown gate 'relu'"):
        GatedFusion([3], 1, gate="relu")


def test_head_layers_follow_dropout_and_batchnorm():
    assert layers(ConcatFusion([3, 4], 1).head) == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert layers(ConcatFusion([3, 4], 1, dropout=0.0, batchnorm=True).head) == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]
    assert ConcatFusion([3, 4], 1, dropout=0.3).head[2].p == 0.3
    assert layers(GatedFusion([3], 1, hidden=(5,)).head) == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert layers(GatedFusion([3], 1, hidden=(5,), dropout=0.0).head) == [nn.Linear, nn.ReLU, nn.Linear]
    assert layers(LowRankTensorFusion([3], 1, hidden=(5,)).head) == [
        nn.Linear,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
    ]
    assert layers(LowRankTensorFusion([3], 1, hidden=(5,), dropout=0.0).head) == [
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    assert layers(AgreementFusion([3, 4], 1, hidden=(5,)).heads[0]) == [nn.Linear, nn.ReLU, nn.Linear]
    assert layers(AgreementFusion([3, 4], 1, hidden=(5,), dropout=0.1).heads[0]) == [
        nn.Linear,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
    ]


def test_defaults():
    g = GatedFusion([3, 4], 1)
    assert g.dim == 128 and g.gate_type == "softmax" and g.proj[0].out_features == 128
    lr = LowRankTensorFusion([3, 4], 1)
    assert lr.factors[0].shape == (4, 4, 64) and lr.bias.shape == (64,)
    assert torch.allclose(lr.rank_weights, torch.full((1, 4), 0.25))
    assert AgreementFusion([3, 4], 1).mode == "agree" and AgreementFusion([3], 1).mode == "linear"
    assert AgreementFusion([3, 4], 10).mode == "poe" and AgreementFusion([3, 4], 10).n_classes == 10


def test_softmax_gates_share_each_unit_and_sigmoid_gates_do_not():
    torch.manual_seed(0)
    feats = [torch.randn(5, 3), torch.randn(5, 4)]
    soft = GatedFusion([3, 4], 1, dim=6).gates(feats)
    assert soft.shape == (5, 2, 6) and torch.allclose(soft.sum(1), torch.ones(5, 6))
    sig = GatedFusion([3, 4], 1, dim=6, gate="sigmoid")
    z = sig.gate(torch.cat(feats, -1)).view(-1, 2, 6)
    assert torch.allclose(sig.gates(feats), torch.sigmoid(z))


def test_gated_fusion_sums_the_gated_projections():
    torch.manual_seed(1)
    g = GatedFusion([3, 4], 2, dim=6, dropout=0.0).eval()
    feats = [torch.randn(5, 3), torch.randn(5, 4)]
    h = torch.stack([torch.tanh(p(f)) for p, f in zip(g.proj, feats)], dim=1)
    assert torch.allclose(g(feats), g.head((g.gates(feats) * h).sum(1)), atol=1e-6)


def test_low_rank_fusion_is_the_weighted_product_plus_bias():
    torch.manual_seed(2)
    m = LowRankTensorFusion([3, 2], 2, rank=3, dim=4, dropout=0.0).eval()
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -0.5, 1.0, 2.0]))
        m.rank_weights.copy_(torch.tensor([[0.2, 0.3, 0.5]]))
    a, b = torch.randn(5, 3), torch.randn(5, 2)
    za = torch.einsum("bd,rdh->brh", torch.cat([a, torch.ones(5, 1)], 1), m.factors[0])
    zb = torch.einsum("bd,rdh->brh", torch.cat([b, torch.ones(5, 1)], 1), m.factors[1])
    h = (m.rank_weights.view(1, 3, 1) * za * zb).sum(1) + m.bias
    assert torch.allclose(m([a, b]), m.head(torch.relu(h)), atol=1e-5)
