"""mmdigits.models.layers on its own, without building encoders: masks, pooling, the fast pooling paths,
masked batch norm against torch's and the MLP's layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmdigits.models.layers import (
    MLP,
    MaskedBatchNorm,
    MaxPool2x2,
    conv_maxpool2x2,
    conv_out_lengths,
    lengths_to_mask,
    masked_frames,
    masked_max,
    masked_mean,
    masked_pool,
    pool_width,
)


def test_lengths_to_mask_is_made_on_the_lengths_device_and_counts_whole_frames() -> None:
    assert lengths_to_mask(torch.tensor([1, 3], device="meta"), 4).device.type == "meta"
    assert lengths_to_mask(torch.tensor([2.5, 0.0]), 4).tolist() == [[True, True, False, False], [False] * 4]


def test_conv_out_lengths_defaults_are_a_plain_conv_and_it_stays_integer() -> None:
    lengths = torch.arange(5, 30)
    expected = torch.tensor([nn.Conv1d(1, 1, 5)(torch.zeros(1, 1, int(n))).shape[-1] for n in lengths])
    assert torch.equal(conv_out_lengths(lengths, 5), expected)
    # (4 + 2 - 7) / 2 = -0.5: floor, not truncation or a float
    out = conv_out_lengths(torch.tensor([4, 6]), 7, stride=2, padding=1)
    assert out.dtype == torch.long and out.tolist() == [0, 1]


def test_masked_frames_and_mean_keep_the_dtype_and_add_deltas_only_when_asked() -> None:
    x = torch.randn(2, 5, 3, dtype=torch.bfloat16)
    mask = lengths_to_mask(torch.tensor([5, 2]), 5)
    assert masked_frames(x, mask).shape == (2, 5, 3)  # no deltas by default
    assert masked_frames(x, mask, deltas=True).dtype == torch.bfloat16
    assert masked_mean(x, mask).dtype == torch.bfloat16


def test_masked_mean_and_max_over_the_valid_frames() -> None:
    x = torch.arange(24.0).view(2, 4, 3) * torch.tensor([1.0, -1.0, 1.0])  # channel 1 falls over time
    mask = lengths_to_mask(torch.tensor([3, 1]), 4)
    assert masked_mean(x, mask).tolist() == [[3.0, -4.0, 5.0], [12.0, -13.0, 14.0]]
    assert masked_max(x, mask).tolist() == [[6.0, -1.0, 8.0], [12.0, -13.0, 14.0]]
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert masked_mean(x[:1], none).tolist() == [[0.0, 0.0, 0.0]]  # no valid frame: zero, not nan
    assert [pool_width(8, m) for m in ("meanmax", "mean", "max")] == [16, 8, 8]


def test_masked_pool_modes() -> None:
    x = torch.randn(3, 6, 4)
    mask = lengths_to_mask(torch.tensor([6, 2, 1]), 6)
    both = torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)
    assert torch.equal(masked_pool(x, mask), both)  # meanmax by default
    assert torch.equal(masked_pool(x, mask, "meanmax"), both)
    assert torch.equal(masked_pool(x, mask, "mean"), masked_mean(x, mask))
    assert torch.equal(masked_pool(x, mask, "max"), masked_max(x, mask))
    with pytest.raises(ValueError, match=r"^unknown pooling mode 'sum'$"):
        masked_pool(x, mask, "sum")


def test_maxpool2x2_takes_unbatched_odd_maps_on_both_paths() -> None:
    x = torch.randn(3, 7, 11)  # (C, H, W), as nn.MaxPool2d takes them
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), nn.functional.max_pool2d(x, 2))
    assert torch.equal(MaxPool2x2()(x.requires_grad_(True)), nn.functional.max_pool2d(x, 2))


def assert_fused_pool_matches(conv: nn.Conv2d, x: torch.Tensor, channels_last: bool) -> None:
    """conv_maxpool2x2 gives max_pool2d(conv(x), 2)'s values and shape, in either memory format."""
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = nn.functional.max_pool2d(conv(x), 2)
        fused = conv_maxpool2x2(x, conv)
    assert fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "c_in, c_out, k, pad, side, bias",
    [(1, 6, 5, 2, 28, True), (6, 16, 5, 0, 14, True), (3, 8, 3, 1, 15, False), (2, 4, 3, 0, 9, True)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_maxpool2x2_equals_conv_then_maxpool(
    c_in: int, c_out: int, k: int, pad: int, side: int, bias: bool, channels_last: bool
) -> None:
    """One stride-2 conv over the pooling phases: max_pool2d(conv(x), 2)'s values (odd sizes cropped)."""
    torch.manual_seed(0)
    x = torch.randn(5, c_in, side, side)
    assert_fused_pool_matches(nn.Conv2d(c_in, c_out, k, padding=pad, bias=bias), x, channels_last)
    with pytest.raises(AssertionError, match="stride-1"):
        conv_maxpool2x2(x, nn.Conv2d(c_in, c_out, k, stride=2))


@pytest.mark.parametrize("kernel, padding", [((3, 5), (1, 0)), ((5, 3), (0, 1)), ((3, 5), (1, 2))])
@pytest.mark.parametrize("size", [(12, 11), (11, 12)])
@pytest.mark.parametrize("bias, channels_last", [(True, False), (False, True)])
def test_conv_maxpool2x2_with_rectangular_kernels_and_one_sided_padding(
    kernel, padding, size, bias, channels_last
) -> None:
    torch.manual_seed(0)
    assert_fused_pool_matches(nn.Conv2d(2, 4, kernel, padding=padding, bias=bias), torch.randn(3, 2, *size),
                              channels_last)  # fmt: skip


def test_conv_maxpool2x2_refuses_what_it_cannot_fuse() -> None:
    x = torch.randn(1, 2, 9, 9)
    with pytest.raises(AssertionError, match=r"^stride-1 dense conv only$"):
        conv_maxpool2x2(x, nn.Conv2d(2, 3, 3, dilation=2))
    for conv in (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Conv2d(2, 3, 3, padding="same")):
        with pytest.raises(AssertionError, match=r"^numeric zero padding only$"):
            conv_maxpool2x2(x, conv)


@pytest.mark.parametrize("affine", [True, False])
def test_fold_into_gives_the_conv_then_the_norm(affine: bool) -> None:
    torch.manual_seed(0)
    conv, norm = nn.Conv1d(3, 5, 3, bias=False), MaskedBatchNorm(5, eps=0.1, affine=affine).eval()
    nn.init.normal_(norm.running_mean)
    nn.init.uniform_(norm.running_var, 0.5, 2.0)
    if affine:
        nn.init.normal_(norm.weight, 1.0, 0.3)
        nn.init.normal_(norm.bias, 0.0, 0.5)
    weight, bias = norm.fold_into(conv.weight)
    x = torch.randn(4, 3, 9)
    with torch.no_grad():
        expected = norm(conv(x), torch.ones(4, 1, 7))
        torch.testing.assert_close(nn.functional.conv1d(x, weight, bias), expected, atol=1e-5, rtol=1e-5)
        mask = lengths_to_mask(torch.tensor([7, 3, 1, 0]), 7).unsqueeze(1).float()
        torch.testing.assert_close(norm(conv(x), mask), expected * mask)  # zero, not nan, past the lengths


def _pair(**kwargs) -> tuple[nn.BatchNorm1d, MaskedBatchNorm]:
    torch.manual_seed(0)
    bn, mbn = nn.BatchNorm1d(6, **kwargs), MaskedBatchNorm(6, **kwargs)
    if bn.affine:
        nn.init.normal_(bn.weight, 1.0, 0.3)
        nn.init.normal_(bn.bias, 0.0, 0.5)
    mbn.load_state_dict(bn.state_dict())
    return bn, mbn


@pytest.mark.parametrize("momentum, affine", [(None, True), (0.3, True), (0.1, False)])
def test_masked_batchnorm_follows_batchnorm_with_its_settings(momentum, affine) -> None:
    """Affine parameters, a large eps and a cumulative average (momentum None) as torch's BatchNorm1d does
    them, in training and afterwards in eval mode."""
    bn, mbn = _pair(eps=0.5, momentum=momentum, affine=affine)
    bn.train(), mbn.train()
    for step in range(3):
        x = torch.randn(5, 6, 7) * (step + 1) + step
        torch.testing.assert_close(mbn(x, torch.ones(5, 1, 7)), bn(x), atol=1e-5, rtol=1e-4)
    assert int(mbn.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    torch.testing.assert_close(mbn.running_mean, bn.running_mean)
    torch.testing.assert_close(mbn.running_var, bn.running_var)
    bn.eval(), mbn.eval()
    x = torch.randn(5, 6, 7)
    torch.testing.assert_close(mbn(x, torch.ones(5, 1, 7)), bn(x), atol=1e-5, rtol=1e-4)


def test_masked_batchnorm_statistics_from_two_valid_positions() -> None:
    bn, mbn = _pair()
    x = torch.randn(2, 6, 4)
    mask = torch.zeros(2, 1, 4)
    mask[0, 0, 1] = mask[1, 0, 3] = 1.0
    out = mbn.train()(x, mask)
    valid = torch.stack([x[0, :, 1], x[1, :, 3]])  # (2, 6): the only two frames that count
    expected = bn.train()(valid)
    torch.testing.assert_close(out[0, :, 1], expected[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1, :, 3], expected[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mbn.running_mean, bn.running_mean)
    assert (out * (1 - mask) == 0).all()


def test_masked_batchnorm_takes_a_half_precision_batch_into_float_statistics() -> None:
    _, mbn = _pair()
    x = torch.randn(4, 6, 5)
    mbn.train()(x.to(torch.bfloat16), torch.ones(4, 1, 5, dtype=torch.bfloat16))
    assert mbn.running_mean.dtype == mbn.running_var.dtype == torch.float32
    expected = 0.9 * torch.zeros(6) + 0.1 * x.to(torch.bfloat16).float().mean((0, 2))
    torch.testing.assert_close(mbn.running_mean, expected, atol=1e-2, rtol=1e-2)


def test_mlp_layout() -> None:
    def kinds(mlp: MLP) -> list[str]:
        return [type(m).__name__ for m in mlp]

    assert kinds(MLP(4, [8])) == ["Linear", "ReLU"]  # no norm, no dropout by default
    assert kinds(MLP(4, [8], dropout=0.0, batchnorm=False)) == ["Linear", "ReLU"]
    with_all = MLP(4, [8, 6], out_dim=3, dropout=0.5, batchnorm=True)
    assert kinds(with_all) == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert [m.p for m in with_all if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert [(m.in_features, m.out_features) for m in with_all if isinstance(m, nn.Linear)] == [
        (4, 8),
        (8, 6),
        (6, 3),
    ]
    assert with_all.out_dim == 3 and with_all(torch.randn(5, 4)).shape == (5, 3)
    assert MLP(4, [8]).out_dim == 8 and MLP(4).out_dim == 4 and MLP(4, out_dim=2).out_dim == 2
