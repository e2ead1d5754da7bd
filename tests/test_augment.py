"""Training-time augmentations keep the batch contract: zeros past each (new) length, bounded changes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmdigits.models import augment as aug
from mmdigits.models.augment import (
    cepstral_warp,
    draw_mix,
    freq_mask,
    mix,
    shift_image,
    speed_perturb,
    time_mask,
)
from mmdigits.models.layers import lengths_to_mask, masked_frames


def _batch(lengths: list[int], T: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), T, 13, generator=g) * lengths_to_mask(lens, T).unsqueeze(-1)
    return x, lens


def test_speed_perturb_resamples_within_bounds_and_keeps_padding_zero():
    torch.manual_seed(0)
    x, lens = _batch([1, 5, 20, 40])
    out, new = speed_perturb(x, lens, 0.2)
    assert (new >= 1).all() and (new <= (lens * 1.2).round()).all() and (new >= (lens * 0.8).round()).all()
    assert out.shape[1] == int(new.max())
    assert (out[~lengths_to_mask(new, out.shape[1])] == 0).all()
    # the first and last valid frames are kept (interpolation between existing frames)
    for b in range(4):
        torch.testing.assert_close(out[b, 0], x[b, 0])
        torch.testing.assert_close(out[b, new[b] - 1], x[b, lens[b] - 1])
    same, same_lens = speed_perturb(x, lens, 0.0)
    assert torch.equal(same_lens, lens) and torch.allclose(same, x[:, : int(lens.max())])


def _frames(lengths: list[int], T: int, pad: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 13) with no zero inside each length (magnitudes in [1, 2), either sign) and ``pad`` past it."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    x = torch.rand(len(lengths), T, 13, generator=g) + 1
    x = x * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)
    x[~lengths_to_mask(lens, T)] = pad
    return x, lens


def _one_block(flags: torch.Tensor) -> bool:
    """The True entries of a 1-d bool tensor are consecutive (or there are none)."""
    idx = flags.nonzero().flatten()
    return len(idx) == 0 or int(idx[-1] - idx[0]) + 1 == len(idx)


LENGTHS = st.lists(st.integers(1, 30), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(lengths=LENGTHS, extra=st.integers(0, 5), width=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_time_mask_zeroes_one_block_of_whole_frames_inside_each_length(
    lengths: list[int], extra: int, width: int, seed: int
) -> None:
    x, lens = _frames(lengths, max(lengths) + extra, pad=7.0, seed=seed)  # padding marked, to see it kept
    torch.manual_seed(seed)
    out = time_mask(x, lens, width)
    valid = lengths_to_mask(lens, x.shape[1])
    zeroed, kept = (out == 0).all(-1), (out == x).all(-1)
    assert out.shape == x.shape
    assert (zeroed | kept).all(), "a frame was changed but not zeroed whole"
    assert torch.equal(out[~valid], x[~valid]), "the mask reached past an utterance's length"
    n = zeroed.sum(1)
    assert (n <= width).all() and (n <= (lens - 1).clamp(min=0)).all(), (n, lens, width)
    assert all(_one_block(row) for row in zeroed)
    if width == 0:
        assert torch.equal(out, x)


def test_time_mask_draws_every_width_up_to_its_bound() -> None:
    x, lens = _frames([40] * 600, 40)
    torch.manual_seed(0)
    zeroed = (time_mask(x, lens, 5) == 0).all(-1)
    # 600 draws of a width in 0..5: each comes up (about 100 times); a block can start at the first frame
    assert sorted(set(zeroed.sum(1).tolist())) == [0, 1, 2, 3, 4, 5]
    assert zeroed[:, 0].any()


@settings(max_examples=60, deadline=None)
@given(lengths=LENGTHS, extra=st.integers(0, 5), width=st.integers(0, 13), seed=st.integers(0, 2**16))
def test_freq_mask_zeroes_one_band_of_whole_coefficients(
    lengths: list[int], extra: int, width: int, seed: int
) -> None:
    x, lens = _frames(lengths, max(lengths) + extra, seed=seed)  # zero past each length: the batch contract
    torch.manual_seed(seed)
    out = freq_mask(x, width)
    assert out.shape == x.shape
    assert (out[~lengths_to_mask(lens, x.shape[1])] == 0).all()
    for b, L in enumerate(lengths):
        got, orig = out[b, :L], x[b, :L]
        band, kept = (got == 0).all(0), (got == orig).all(0)  # per coefficient, over every valid frame
        assert (band | kept).all(), "a coefficient was changed but not zeroed in every frame"
        assert int(band.sum()) <= width and _one_block(band), (band, width)
    if width == 0:
        assert torch.equal(out, x)


def test_freq_mask_draws_every_width_up_to_its_bound_over_every_coefficient() -> None:
    x, lens = _frames([5] * 600, 5)
    torch.manual_seed(0)
    band = (freq_mask(x, 3) == 0).all(1)  # (600, 13): the coefficients zeroed in each utterance
    assert sorted(set(band.sum(1).tolist())) == [0, 1, 2, 3]
    assert band.any(0).all()  # every coefficient, the first and the last too, is inside some band


def test_cepstral_warp_stretches_the_envelope_and_keeps_padding_zero():
    import math

    x, lens = _batch([1, 6, 40])
    mean, std = torch.linspace(-2, 2, 13), torch.linspace(0.5, 3, 13)
    torch.testing.assert_close(cepstral_warp(x, lens, 0.0, mean, std), x, atol=1e-5, rtol=0)  # factor 1
    torch.manual_seed(0)
    out = cepstral_warp(x, lens, 0.2, mean, std)
    valid = lengths_to_mask(lens, 40)
    assert (out[~valid] == 0).all() and (out[valid] - x[valid]).abs().mean() > 0.05
    bands, c = 24, torch.tensor([3.0, 1.0, -0.5, 0.3, 0.2] + [0.0] * 8)  # a smooth log-mel envelope

    def envelope(coeffs: torch.Tensor, stretch: float) -> torch.Tensor:
        k, m = torch.arange(13.0), (torch.arange(bands) + 0.5) / stretch
        scale = torch.full((13,), math.sqrt(2 / bands))
        scale[0] = math.sqrt(1 / bands)
        basis = scale[:, None] * torch.cos(math.pi * k[:, None] * m[None, :] / bands)
        return (basis * coeffs[:, None]).sum(0)

    torch.manual_seed(1)
    warped = cepstral_warp(c.view(1, 1, 13), torch.tensor([1]), 0.1, torch.zeros(13), torch.ones(13))
    torch.manual_seed(1)
    stretch = 1 + (torch.rand(1).item() * 2 - 1) * 0.1  # the factor the warp drew
    assert abs(stretch - 1) > 0.02
    # its coefficients describe the stretched envelope (up to the 13-term truncation), not the original one
    err = (envelope(warped.view(13), 1.0) - envelope(c, stretch)).abs().max()
    assert err < 0.01 < (envelope(c, 1.0) - envelope(c, stretch)).abs().max()


def test_deltas_are_padding_invariant():
    x, lens = _batch([3, 7])
    wide = torch.cat([x, torch.zeros(2, 30, 13)], dim=1)
    d, d_wide = (masked_frames(v, lengths_to_mask(lens, v.shape[1]), deltas=True) for v in (x, wide))
    assert d.shape == (2, 40, 26) and torch.equal(d_wide[:, :40], d) and (d_wide[:, 40:] == 0).all()
    torch.testing.assert_close(d[0, 1, 13:], (x[0, 2] - x[0, 0]) / 2)
    torch.testing.assert_close(d[0, 2, 13:], (0 - x[0, 1]) / 2)  # the frame after the last counts as zero


def test_random_affine_keeps_shape_background_and_ink():
    from mmdigits.models.augment import random_affine

    torch.manual_seed(0)
    img = torch.full((4, 1, 28, 28), -0.4)
    img[:, :, 10:18, 12:16] = 2.5  # a stroke on normalised paper
    out = random_affine(img, degrees=10, scale=0.1, shift=2)
    assert out.shape == img.shape
    assert torch.isclose(out[:, :, 0, 0], torch.tensor(-0.4)).all()  # corners stay paper
    assert ((out - -0.4).abs().sum((1, 2, 3)) > 0.5 * (img - -0.4).abs().sum((1, 2, 3))).all()  # ink kept
    same = random_affine(img, degrees=0, scale=0, shift=0)
    torch.testing.assert_close(same, img, atol=1e-5, rtol=1e-5)


def test_smooth_noise_matches_full_grid_gaussian_noise_in_spread_and_smoothness():
    from mmdigits.models.augment import smooth_noise

    torch.manual_seed(0)
    field = smooth_noise((2000, 2, 28, 28), sigma=4.0, device=torch.device("cpu"))
    x = torch.arange(28.0)
    k = torch.exp(-0.5 * ((x[:, None] - x[None, :]) / 4.0) ** 2)
    k = k / k[14].sum()
    ref = k @ (torch.rand(4000, 28, 28) * 2 - 1) @ k.T  # the textbook field: every pixel's noise, blurred
    inner = (slice(None), slice(None), slice(8, 20), slice(8, 20))
    assert abs(field[inner].std() / ref[:, 8:20, 8:20].std() - 1) < 0.05
    step = (field[..., 1:] - field[..., :-1]).std() / field.std()  # neighbours nearly equal: a smooth field
    ref_step = (ref[..., 1:] - ref[..., :-1]).std() / ref.std()
    assert step < 0.3 and abs(step / ref_step - 1) < 0.2
    assert abs(field.mean()) < 0.01


def test_random_affine_elastic_bends_strokes_and_keeps_the_paper():
    from mmdigits.models.augment import random_affine

    img = torch.full((64, 1, 28, 28), -0.4)
    img[:, :, 4:24, 13:15] = 2.5  # a vertical stroke
    torch.manual_seed(1)
    plain = random_affine(img, degrees=0, scale=0, shift=0)
    torch.manual_seed(1)
    bent = random_affine(img, degrees=0, scale=0, shift=0, elastic=34.0, sigma=4.0)
    torch.testing.assert_close(plain, img, atol=1e-5, rtol=1e-5)
    moved = (bent - img).abs().amax((1, 2, 3))
    assert (moved > 0.5).float().mean() > 0.9  # nearly every stroke is displaced
    assert torch.isclose(bent[:, :, 0, 0], torch.tensor(-0.4)).all()
    ink = (bent + 0.4).sum((1, 2, 3)) / (img + 0.4).sum((1, 2, 3))
    assert ((ink > 0.4) & (ink < 1.6)).all()  # bent, not torn away or smeared over the page


def test_draw_mix_pairs_every_example_and_keeps_its_own_label_the_larger_share():
    torch.manual_seed(0)
    weights = []
    for _ in range(200):
        partners, lam = draw_mix(16, 0.4, torch.device("cpu"))
        assert sorted(partners.tolist()) == list(range(16))
        weights.append(lam)
    assert min(weights) >= 0.5 and max(weights) <= 1.0
    # Beta(0.4, 0.4) folded to [0.5, 1]: mostly near 1, but a spread, not one value
    assert 0.7 < sum(weights) / len(weights) < 0.9 and max(weights) - min(weights) > 0.3
    x = torch.arange(6.0).reshape(3, 2)
    torch.testing.assert_close(mix(x, torch.tensor([1, 2, 0]), 0.75), 0.75 * x + 0.25 * x[[1, 2, 0]])


def test_shift_image_moves_the_digit_and_fills_with_background():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 20] = 255.0
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1), (2, -1)):
        moved = shift_image(image, dx, dy)
        assert moved.shape == image.shape and moved.sum() == 255.0
        assert moved[0, 0, 10 + dy, 20 + dx] == 255.0
    edge = torch.full((1, 1, 28, 28), 7.0)
    assert (shift_image(edge, 1, 0)[..., :, 0] == 0).all() and (
        shift_image(edge, 0, -1)[..., -1, :] == 0
    ).all()


def test_random_shift_moves_the_whole_batch_by_one_offset_within_the_bound():
    torch.manual_seed(0)
    image = torch.zeros(2, 1, 9, 9)
    image[:, 0, 4, 4] = 1.0
    image[1, 0, 4, 5] = 2.0
    seen = set()
    for _ in range(60):
        out = aug.random_shift(image, 2)
        y, x = (int(v) for v in torch.nonzero(out[0, 0] == 1.0)[0])
        dy, dx = y - 4, x - 4
        assert abs(dx) <= 2 and abs(dy) <= 2
        assert out[1, 0, 4 + dy, 5 + dx] == 2.0  # the same offset for every image
        seen.add((dx, dy))
    assert {d for d, _ in seen} == {-2, -1, 0, 1, 2} and {d for _, d in seen} == {-2, -1, 0, 1, 2}
    assert torch.equal(aug.random_shift(image, 0), image)


def test_affine_parameters_are_checked_when_the_model_is_built():
    assert aug.check_affine(None) is None
    assert aug.check_affine({}) == {}
    params = {"degrees": 10.0, "scale": 0.1, "shift": 2.0, "elastic": 1.0}
    assert aug.check_affine(params) is params
    with pytest.raises(
        ValueError, match=r"model.image_affine=\{'degree': 10\}: .*degree.*; it takes \['degrees', "
    ):
        aug.check_affine({"degree": 10})
    with pytest.raises(ValueError, match=r"it takes \['degrees', 'scale', 'shift', 'elastic', 'sigma'\]"):
        aug.check_affine({"degrees": 1.0})
