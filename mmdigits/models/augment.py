"""Training-time augmentations of normalised batches: images (B,1,28,28), audio (B,T,13) zero past length."""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdigits.models.layers import lengths_to_mask

ONE_PIXEL_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def shift_image(image: Tensor, dx: int, dy: int) -> Tensor:
    """The batch moved ``dx`` pixels right and ``dy`` down; uncovered pixels are 0 (a raw image's
    background)."""
    k = max(abs(dx), abs(dy))
    padded = F.pad(image, (k, k, k, k))
    return padded[:, :, k - dy : k - dy + image.shape[2], k - dx : k - dx + image.shape[3]]


def random_shift(image: Tensor, shift: int) -> Tensor:
    """Translate the batch by one random offset of up to ``shift`` pixels in each direction."""
    dx, dy = torch.randint(0, 2 * shift + 1, (2,)).tolist()
    return shift_image(image, shift - dx, shift - dy)


def draw_mix(batch_size: int, alpha: float, device: torch.device) -> tuple[Tensor, float]:
    """Mixup (Zhang et al., 2018): a partner for each example (a permutation of the batch) and one weight
    lam ~ Beta(alpha, alpha), folded to lam >= 0.5 so that each blend's own label keeps the larger share."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return torch.randperm(batch_size, device=device), max(lam, 1.0 - lam)


def mix(x: Tensor, partners: Tensor, lam: float) -> Tensor:
    """lam * x + (1 - lam) * x[partners]."""
    return torch.lerp(x[partners], x, lam)


def time_mask(audio: Tensor, lengths: Tensor, width: int) -> Tensor:
    """SpecAugment-style: zero one block of up to ``width`` frames inside each utterance, starting anywhere it
    fits (its last frame can be masked too; at least one frame of every utterance is kept)."""
    t = torch.arange(audio.shape[1], device=audio.device)
    w = torch.randint(0, width + 1, (audio.shape[0], 1), device=audio.device)
    w = torch.minimum(w, (lengths.unsqueeze(1) - 1).clamp(min=0))
    start = (torch.rand(audio.shape[0], 1, device=audio.device) * (lengths.unsqueeze(1) - w + 1)).long()
    keep = ~((t >= start) & (t < start + w))
    return audio * keep.unsqueeze(-1)


def speed_perturb(audio: Tensor, lengths: Tensor, amount: float) -> tuple[Tensor, Tensor]:
    """Resample each utterance in time by a random factor in [1 - amount, 1 + amount] (linear interpolation
    between frames): a faster or slower speaker. Returns the new batch, zero past the new lengths."""
    B, _, C = audio.shape
    rate = 1.0 + (torch.rand(B, device=audio.device) * 2 - 1) * amount
    new = (lengths.float() * rate).round().long().clamp_min(1)
    T = int(new.max())
    t = torch.arange(T, device=audio.device, dtype=audio.dtype)[None, :]
    last = (lengths - 1).to(audio.dtype)[:, None]
    pos = (t * last / (new - 1).clamp_min(1).to(audio.dtype)[:, None]).clamp(max=last)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=(lengths - 1)[:, None])
    w = (pos - lo.to(audio.dtype)).unsqueeze(-1)

    def take(i: Tensor) -> Tensor:
        return audio.gather(1, i.unsqueeze(-1).expand(-1, -1, C))

    out = take(lo) * (1 - w) + take(hi) * w
    return out * lengths_to_mask(new, T).unsqueeze(-1).to(audio.dtype), new


def freq_mask(audio: Tensor, width: int) -> Tensor:
    """SpecAugment-style: zero one band of up to ``width`` consecutive coefficients in each utterance."""
    B, _, C = audio.shape
    w = torch.randint(0, width + 1, (B, 1), device=audio.device)
    start = (torch.rand(B, 1, device=audio.device) * (C - w + 1)).long()
    c = torch.arange(C, device=audio.device)[None, :]
    keep = ~((c >= start) & (c < start + w))
    return audio * keep.unsqueeze(1).to(audio.dtype)


def cepstral_warp(
    audio: Tensor, lengths: Tensor, amount: float, mean: Tensor, std: Tensor, bands: int = 24
) -> Tensor:
    """Vocal-tract-length perturbation in the cepstral domain: another speaker's voice, roughly. Each
    utterance's MFCCs (un-normalised with ``mean`` and ``std``: the warp maps coefficients, not z-scores) are
    read as the cosine series of a smooth log-mel envelope over ``bands`` bands, the envelope is stretched
    along the mel axis by a random factor in [1 - amount, 1 + amount] (reflected at the top band, as the
    series is), and its DCT is taken again: one C x C matrix per utterance, the identity at factor 1. An
    approximation where the features were liftered. Returns the batch normalised again, zero past length."""
    raw = audio * std + mean
    B, T, C = raw.shape
    alpha = 1.0 + (torch.rand(B, device=raw.device) * 2 - 1) * amount
    k = torch.arange(C, device=raw.device, dtype=raw.dtype)
    m = torch.arange(bands, device=raw.device, dtype=raw.dtype) + 0.5
    scale = torch.full((C,), math.sqrt(2.0 / bands), device=raw.device, dtype=raw.dtype)
    scale[0] = math.sqrt(1.0 / bands)

    def cosines(pos: Tensor) -> Tensor:  # (..., bands) band positions -> (..., C, bands)
        return scale[:, None] * torch.cos(math.pi * k[:, None] * pos[..., None, :] / bands)

    # the DCT (orthonormal rows), and its inverse read where each band finds the unwarped envelope
    dct, inverse = cosines(m), cosines(m / alpha.to(raw.dtype)[:, None])
    warp = torch.einsum("jm,bkm->bjk", dct, inverse)  # (B, C, C)
    out = (torch.einsum("btk,bjk->btj", raw, warp) - mean) / std
    return out * lengths_to_mask(lengths, T).unsqueeze(-1).to(out.dtype)


def smooth_noise(shape: tuple[int, ...], sigma: float, device: torch.device) -> Tensor:
    """A random field of ``shape`` (B, C, H, W): uniform noise in [-1, 1] per pixel smoothed by a Gaussian of
    ``sigma`` pixels. Computed cheaply from noise on every other pixel (a quarter of the random numbers),
    rescaled to the same spread, as two matrix products; ``sigma`` should be a few pixels."""
    B, C, H, W = shape

    def blur(n: int) -> Tensor:  # (n, ceil(n / 2)): from the coarse grid to every pixel
        x = torch.arange(n, device=device, dtype=torch.float32)
        k = torch.exp(-0.5 * ((x[:, None] - x[None, ::2]) / sigma) ** 2)
        full = torch.exp(-0.5 * ((x - x[n // 2]) / sigma) ** 2).sum()
        return math.sqrt(2) * k / full  # a quarter as many samples: sqrt(2) per axis keeps the variance

    noise = torch.rand(B * C, (H + 1) // 2, (W + 1) // 2, device=device) * 2 - 1
    return (blur(H) @ noise @ blur(W).T).view(B, C, H, W)


def random_affine(
    image: Tensor, degrees: float, scale: float, shift: float, elastic: float = 0.0, sigma: float = 4.0
) -> Tensor:
    """A random rotation (up to ``degrees``), zoom (by up to ``scale``) and translation (up to ``shift``
    pixels) per image, bilinear, with zeros (the normalised background shifts) filled in. ``elastic`` > 0
    adds an elastic distortion (Simard et al. 2003) in the same resampling: a displacement field of uniform
    noise smoothed by a Gaussian of ``sigma`` pixels and scaled by ``elastic`` pixels (34 and 4 there)."""
    B, _, H, W = image.shape
    dev = image.device
    angle = (torch.rand(B, device=dev) * 2 - 1) * math.radians(degrees)
    zoom = 1.0 + (torch.rand(B, device=dev) * 2 - 1) * scale
    move = (torch.rand(B, 2, device=dev) * 2 - 1) * (2 * shift / torch.tensor([W, H], device=dev))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
    if elastic > 0:
        field = smooth_noise((B, 2, H, W), sigma, dev) * elastic  # pixels; grid units are 2 / side
        field = field * (2 / torch.tensor([W, H], device=dev)).view(1, 2, 1, 1)
        grid = grid + field.permute(0, 2, 3, 1).to(grid.dtype)
    background = image.amin(dim=(1, 2, 3), keepdim=True)  # the blank paper, after normalisation
    return F.grid_sample(image - background, grid, align_corners=False) + background


def check_affine(params: dict | None) -> dict | None:
    """``params`` for :func:`random_affine` (``model.image_affine``), checked when the model is built rather
    than at the first training step."""
    signature = inspect.signature(random_affine)
    if params:
        try:
            signature.bind(None, **params)
        except TypeError as err:
            names = list(signature.parameters)[1:]
            raise ValueError(f"model.image_affine={params}: {err}; it takes {names}") from None
    return params
