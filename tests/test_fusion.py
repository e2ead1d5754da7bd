"""Fusion heads: shapes/gradients for any number of inputs, agreement semantics, balance loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmdigits.models.fusion import AgreementFusion, agreement_logit
from tests.zoo import build, zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("out_dim", [1, 10])
@pytest.mark.parametrize("in_dims", [[24], [24, 7], [5, 9, 3]], ids=["uni", "bi", "tri"])
@pytest.mark.parametrize("name", sorted(zoo("fusion")))
def test_fusion_shapes_and_gradients(name: str, in_dims: list[int], out_dim: int) -> None:
    torch.manual_seed(0)
    fusion = build("fusion", name, in_dims=in_dims, out_dim=out_dim).train()
    feats = [torch.randn(6, d, requires_grad=True) for d in in_dims]
    out = fusion(feats)
    assert out.shape == (6, out_dim) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    for n, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats), "an input is ignored"
    assert fusion.eval()(feats).shape == (6, out_dim)
    with pytest.raises(ValueError):
        fusion(feats + [feats[0]])


def _identity_agreement(scale: float = 8.0, **kw) -> AgreementFusion:
    fusion = AgreementFusion([10, 10], 1, **kw)
    for head in fusion.heads:
        nn.init.eye_(head[0].weight)
        head[0].weight.data *= scale
        nn.init.zeros_(head[0].bias)
    return fusion


def test_agreement_match_semantics() -> None:
    fusion = _identity_agreement()
    eye = torch.eye(10)
    same = fusion([eye, eye])
    diff = fusion([eye, eye.roll(1, dims=0)])
    assert (torch.sigmoid(same) > 0.99).all() and (torch.sigmoid(diff) < 0.01).all()
    logits = fusion.modality_logits([eye, eye])
    assert len(logits) == 2 and logits[0].shape == (10, 10)
    # logit equals logit(sum_k p_img p_aud) computed naively, for moderate values
    a, b = torch.randn(5, 10), torch.randn(5, 10)
    p = (a.softmax(-1) * b.softmax(-1)).sum(-1, keepdim=True)
    torch.testing.assert_close(
        agreement_logit([a.log_softmax(-1), b.log_softmax(-1)]), torch.logit(p), atol=1e-4, rtol=1e-4
    )


def test_agreement_extremes_are_finite_and_trainable() -> None:
    a = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 40.0, 0.0]], requires_grad=True)
    lo = agreement_logit([a.log_softmax(-1), b.log_softmax(-1)], eps=1e-6)
    hi = agreement_logit([a.log_softmax(-1), a.log_softmax(-1)], eps=1e-6)
    assert lo.item() == pytest.approx(-math.log(1e6), rel=1e-2) and hi.item() == pytest.approx(
        math.log(1e6), rel=1e-2
    )
    # a confidently wrong "no match" still gets gradient under BCE (a hard clamp would give 0)
    nn.functional.binary_cross_entropy_with_logits(lo, torch.ones_like(lo)).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_agreement_autocast_float32() -> None:
    fusion = _identity_agreement()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion([torch.eye(10), torch.eye(10)])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_agreement_temperature_and_digit_mode() -> None:
    eye = torch.eye(10)
    cold, hot = _identity_agreement(temperature=0.5), _identity_agreement(temperature=4.0)
    assert (cold([eye, eye]) > hot([eye, eye])).all()
    digit = AgreementFusion([10, 6], 10)
    f = [torch.randn(4, 10), torch.randn(4, 6)]
    expected = sum(lg.log_softmax(-1) for lg in digit.modality_logits(f))
    torch.testing.assert_close(digit(f), expected)


def test_balance_loss_prefers_uniform_usage() -> None:
    fusion = _identity_agreement()
    eye = torch.eye(10)
    collapsed = torch.zeros(10, 10)
    collapsed[:, 3] = 1.0
    uniform_loss = fusion.balance_loss(fusion.modality_logits([eye, eye]))
    collapsed_loss = fusion.balance_loss(fusion.modality_logits([collapsed, collapsed]))
    assert uniform_loss < 0.01 and collapsed_loss > 1.5 and collapsed_loss <= math.log(10) + 1e-5
    feats = [collapsed.clone().requires_grad_(True), eye.clone()]
    fusion.balance_loss(fusion.modality_logits(feats)).backward()
    assert torch.isfinite(feats[0].grad).all() and feats[0].grad.abs().sum() > 0


def test_late_fusion_is_calibrated_agreement() -> None:
    torch.manual_seed(0)
    f = [torch.randn(4, 12), torch.randn(4, 5)]
    digit = build("fusion", "late", in_dims=[12, 5], out_dim=10)
    logits = digit.modality_logits(f)
    torch.testing.assert_close(digit(f), logits[0].log_softmax(-1) + logits[1].log_softmax(-1))
    match = build("fusion", "late", in_dims=[12, 5], out_dim=1)
    logps = [lg.log_softmax(-1) for lg in match.modality_logits(f)]
    torch.testing.assert_close(match(f), agreement_logit(logps))  # scale 1, bias 0 at init
    assert {n for n, _ in match.named_parameters() if "heads" not in n} == {"scale", "bias"}
    with torch.no_grad():
        match.scale.fill_(2.0)
        match.bias.fill_(-1.0)
    torch.testing.assert_close(match(f), 2 * agreement_logit(logps) - 1)
    plain = build("fusion", "agreement", in_dims=[12, 5], out_dim=1)
    assert not [n for n, _ in plain.named_parameters() if "heads" not in n]  # no calibration


def test_combine_of_modality_logits_is_forward() -> None:
    torch.manual_seed(0)
    f = [torch.randn(4, 12), torch.randn(4, 5)]
    for name in ("late", "agreement"):
        fusion = build("fusion", name, in_dims=[12, 5], out_dim=1).eval()
        torch.testing.assert_close(fusion.combine(fusion.modality_logits(f)), fusion(f))
