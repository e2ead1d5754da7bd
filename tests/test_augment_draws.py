"""Training-time augmentations draw what they say (ranges, shapes, where a block can fall), on the batch's
device and in its dtype: tests/test_augment.py checks the batch contract, these the draws themselves."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from mmdigits.models import augment as aug
from mmdigits.models.augment import (
    cepstral_warp,
    draw_mix,
    freq_mask,
    random_affine,
    shift_image,
    smooth_noise,
    speed_perturb,
    time_mask,
)
from mmdigits.models.layers import lengths_to_mask
from tests.test_augment import _frames


def _image(batch: int = 4, paper: float = -0.4, h: int = 28, w: int = 28) -> torch.Tensor:
    img = torch.full((batch, 1, h, w), paper)
    img[:, :, h // 3 : 2 * h // 3, w // 2 - 2 : w // 2 + 2] = 2.5  # a stroke on normalised paper
    return img


def test_every_tensor_an_augmentation_makes_is_made_on_the_batchs_device() -> None:
    """With factories defaulting to another device (meta: shapes only), a tensor made without the batch's
    device would not combine with the batch, or would hold no values: each augmentation gives what it gives
    without that default, from the same draws."""
    x, lens = _frames([1, 6, 40], 40)
    mean, std = torch.linspace(-2, 2, 13), torch.linspace(0.5, 3, 13)
    image, cpu = _image(), torch.device("cpu")

    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        return {
            "time_mask": time_mask(x, lens, 5),
            "freq_mask": freq_mask(x, 5),
            "speed_perturb": speed_perturb(x, lens, 0.2)[0],
            "cepstral_warp": cepstral_warp(x, lens, 0.2, mean, std),
            "random_affine": random_affine(image, 10.0, 0.1, 2.0),
            "elastic": random_affine(image, 10.0, 0.1, 2.0, elastic=3.0),
            "smooth_noise": smooth_noise((2, 2, 8, 8), 2.0, cpu),
        }

    with torch.device("meta"):
        elsewhere = run()
    plain = run()
    assert {name: out.device.type for name, out in elsewhere.items()} == dict.fromkeys(plain, "cpu")
    for name, out in plain.items():
        assert torch.equal(elsewhere[name], out), name


def test_draws_made_for_a_named_device_are_made_there() -> None:
    meta = torch.device("meta")
    assert draw_mix(8, 0.4, meta)[0].device == meta
    assert smooth_noise((2, 2, 8, 8), 2.0, meta).device == meta


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_augmentations_keep_the_batch_dtype(dtype: torch.dtype) -> None:
    """A half-precision or double batch comes back in its own dtype (a helper tensor made in the default
    float32 would promote it, or not combine with it)."""
    x, lens = _frames([1, 2, 6, 40], 40)
    x = x.to(dtype)
    mean, std = torch.linspace(-2, 2, 13, dtype=dtype), torch.linspace(0.5, 3, 13, dtype=dtype)
    torch.manual_seed(0)
    outs = {
        "time_mask": time_mask(x, lens, 5),
        "freq_mask": freq_mask(x, 5),
        "speed_perturb": speed_perturb(x, lens, 0.2)[0],
        "cepstral_warp": cepstral_warp(x, lens, 0.2, mean, std),
        "random_affine": random_affine(_image().to(dtype), 10.0, 0.1, 2.0),
        "elastic": random_affine(_image().to(dtype), 10.0, 0.1, 2.0, elastic=3.0),
    }
    assert {name: out.dtype for name, out in outs.items()} == dict.fromkeys(outs, dtype)


def test_cepstral_warp_at_factor_one_is_the_identity_to_double_precision() -> None:
    """The DCT and its inverse are exact in float64: no part of the warp is computed in float32."""
    x, lens = _frames([3, 40], 40)
    x = x.double()
    mean, std = torch.linspace(-2, 2, 13).double(), torch.linspace(0.5, 3, 13).double()
    torch.testing.assert_close(cepstral_warp(x, lens, 0.0, mean, std), x, atol=1e-12, rtol=0)


def test_time_mask_reaches_every_frame_and_the_widest_block_an_utterance_allows() -> None:
    x, lens = _frames([4] * 600, 4)
    torch.manual_seed(0)
    zeroed = (time_mask(x, lens, 10) == 0).all(-1)  # (600, 4)
    # widths are capped at length - 1 (one frame is kept), and that cap is reached
    assert sorted(set(zeroed.sum(1).tolist())) == [0, 1, 2, 3]
    # the block falls anywhere inside the utterance: its first and its last frame are each masked sometimes
    assert zeroed.any(0).tolist() == [True] * 4


def test_freq_mask_draws_its_width_uniformly_and_always_fits_the_band_inside() -> None:
    x, lens = _frames([1] * 20000, 1)
    torch.manual_seed(0)
    n = (freq_mask(x, 13) == 0).all(1).sum(1).float()  # (20000,): coefficients zeroed per utterance
    # a width uniform on 0..13, never cut short by the last coefficient: mean 6.5, all 13 one time in 14
    assert abs(n.mean().item() - 6.5) < 0.2
    assert 0.06 < (n == 13).float().mean().item() < 0.085


def test_speed_perturb_draws_rates_on_both_sides_and_interpolates_linearly() -> None:
    B, L = 400, 50
    ramp = torch.arange(L, dtype=torch.float32)[None, :, None] + 100 * torch.arange(13.0)  # (1, L, 13)
    x, lens = ramp.expand(B, L, 13).clone(), torch.full((B,), L)
    torch.manual_seed(0)
    out, new = speed_perturb(x, lens, 0.2)
    # rates in [0.8, 1.2], either way: new lengths in [40, 60], both ends reached
    assert 40 <= new.min() <= 42 and 58 <= new.max() <= 60 and abs(new.float().mean().item() - L) < 1
    for b in range(B):
        n = int(new[b])
        pos = torch.arange(n) * (L - 1) / (n - 1)  # where frame i of the new utterance reads the old one
        torch.testing.assert_close(out[b, :n], pos[:, None] + 100 * torch.arange(13.0), atol=1e-3, rtol=0)
    short = torch.randn(3, 3, 13) * lengths_to_mask(torch.tensor([2, 1, 3]), 3).unsqueeze(-1)
    same, same_lens = speed_perturb(short, torch.tensor([2, 1, 3]), 0.0)
    assert torch.equal(same_lens, torch.tensor([2, 1, 3]))
    torch.testing.assert_close(same, short)


def test_shift_image_keeps_a_non_square_shape() -> None:
    image = torch.zeros(1, 1, 10, 20)
    image[0, 0, 3, 15] = 1.0
    moved = shift_image(image, 2, 1)
    assert moved.shape == image.shape and moved[0, 0, 4, 17] == 1.0 and moved.sum() == 1.0


def _thetas(monkeypatch, image: torch.Tensor, **params) -> torch.Tensor:
    """The affine matrices (B, 2, 3) random_affine hands to affine_grid."""
    seen, real = [], F.affine_grid

    def spy(theta, size, align_corners=None):
        seen.append(theta)
        return real(theta, size, align_corners=align_corners)

    monkeypatch.setattr(aug.F, "affine_grid", spy)
    random_affine(image, **params)
    (theta,) = seen
    return theta


def test_random_affine_draws_rotation_zoom_and_shift_within_their_bounds(monkeypatch) -> None:
    H, W = 20, 28
    torch.manual_seed(0)
    theta = _thetas(monkeypatch, _image(4000, h=H, w=W), degrees=30.0, scale=0.25, shift=3.0)
    a, b = theta[:, 0, 0], theta[:, 1, 0]
    # a rotation and one zoom for both axes: [[a, -b], [b, a]]
    assert torch.equal(theta[:, 1, 1], a) and torch.equal(theta[:, 0, 1], -b)
    angle, zoom = torch.rad2deg(torch.atan2(b, a)), 1 / torch.hypot(a, b)  # the grid reads 1 / zoom
    assert angle.abs().max() <= 30 + 1e-3 and angle.min() < -28 and angle.max() > 28
    assert abs(angle.mean().item()) < 1.5
    assert 0.75 - 1e-4 <= zoom.min() < 0.77 and 1.23 < zoom.max() <= 1.25 + 1e-4
    assert abs(zoom.mean().item() - 1) < 0.02
    move = theta[:, :, 2] * torch.tensor([W, H]) / 2  # grid units are 2 / side: pixels
    assert move.abs().max() <= 3 + 1e-4 and (move.amin(0) < -2.8).all() and (move.amax(0) > 2.8).all()
    assert abs(torch.corrcoef(move.T)[0, 1].item()) < 0.1  # x and y drawn apart


def test_random_affine_fills_each_image_with_its_own_paper() -> None:
    img = _image(64)
    img[1::2] += 0.7  # every other image on lighter paper: -0.4 and 0.3
    paper = img.amin((1, 2, 3), keepdim=True)
    torch.manual_seed(0)
    out = random_affine(img, degrees=20.0, scale=0.3, shift=4.0)
    assert (out >= paper - 1e-5).all()
    assert torch.isclose(out[:, :, 0, 0], paper[:, :, 0, 0]).all()  # the corners stay paper


def test_random_affine_passes_align_corners_and_warns_of_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        random_affine(_image(), 10.0, 0.1, 2.0, elastic=2.0)


def test_random_affine_elastic_defaults_and_small_displacements(monkeypatch) -> None:
    img = _image(8)
    torch.manual_seed(3)
    default = random_affine(img, 0.0, 0.0, 0.0, elastic=5.0)
    torch.manual_seed(3)
    assert torch.equal(default, random_affine(img, 0.0, 0.0, 0.0, elastic=5.0, sigma=4.0))  # sigma 4
    torch.manual_seed(3)
    assert not torch.equal(default, random_affine(img, 0.0, 0.0, 0.0, elastic=5.0, sigma=2.0))
    torch.manual_seed(3)
    assert (random_affine(img, 0.0, 0.0, 0.0, elastic=0.5) - img).abs().amax() > 0.05  # half a pixel
    monkeypatch.setattr(aug, "smooth_noise", lambda *a: pytest.fail("drew a field with elastic=0"))
    random_affine(img, 10.0, 0.1, 2.0, elastic=0.0)


def test_smooth_noise_has_the_spread_of_the_full_grid_field_on_small_images() -> None:
    """On a 16 x 16 image with sigma 6 (a Gaussian truncated by the edges) the spread still matches the
    textbook field: every pixel's uniform noise blurred by the Gaussian, normalised at the centre."""
    n, sigma = 16, 6.0
    torch.manual_seed(0)
    field = smooth_noise((4000, 1, n, n), sigma, torch.device("cpu"))
    x = torch.arange(float(n), dtype=torch.float64)
    k = torch.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    k = k / k[n // 2].sum()
    per_axis = (k**2).sum(1).mean()  # the mean over pixels of one axis's share of the variance
    ref = math.sqrt(per_axis.item() ** 2 / 3)  # uniform noise on [-1, 1] has variance 1/3
    assert abs(field.std().item() / ref - 1) < 0.03
