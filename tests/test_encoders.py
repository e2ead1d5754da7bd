"""Audio/image encoders: the contract (shapes, padding invariance, backward, a tiny overfit) for every encoder
config under conf/, plus masked batch norm and length tracking (the training-mode padding contract:
test_encoders_train.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmdigits.models.layers import (
    MLP,
    MaskedBatchNorm,
    MaxPool2x2,
    conv_out_lengths,
    lengths_to_mask,
    masked_max,
    masked_mean,
)
from tests.zoo import LENGTHS, build, mfcc_batch, randomise_norms, zoo

pytestmark = pytest.mark.usefixtures("one_thread")


AUDIO = sorted(zoo("audio_encoder"))  # every audio encoder config is contract-tested
# extra non-default variants so every code path (LSTM head, 'mean' pooling, learned positions...) is covered
VARIANTS = {
    "lstm_bi2": ("lstm", dict(bidirectional=True, num_layers=2)),
    "crnn_lstm_mean": ("crnn", dict(rnn="lstm", pool="mean", strides=[2, 2], kernel_size=3)),
    "crnn_packed": ("crnn", dict(packed=True)),
    "cnn1d_mean": ("cnn1d", dict(strides=[2, 2, 2], pool="mean")),
    "cnn1d_deltas": ("cnn1d", dict(deltas=True, channels=[32, 32, 32, 32], strides=[1, 2, 2, 1])),
    "transformer_learned": ("transformer", dict(positional="learned")),
    "cnn2d_strided": ("cnn2d", dict(time_strides=[2, 2, 1], kernel_size=5)),
    "rocket_soft_deltas": ("rocket", dict(tau=0.1, deltas=True)),
    "inception_squeezed": (
        "inception",
        dict(
            depth=2, residual_every=1, kernel_sizes=[3, 7], filters=8, bottleneck=4, pool="mean", dropout=0.1
        ),
    ),
}
ALL_AUDIO = {**{n: (n, {}) for n in AUDIO}, **VARIANTS}


@pytest.fixture(params=sorted(ALL_AUDIO))
def audio_encoder(request) -> nn.Module:
    torch.manual_seed(0)
    name, kw = ALL_AUDIO[request.param]
    model = build("audio_encoder", name, **kw)
    randomise_norms(model)
    return model.eval()


def test_audio_padding_invariance(audio_encoder: nn.Module) -> None:
    assert_padding_invariant(audio_encoder)


def assert_padding_invariant(audio_encoder: nn.Module) -> None:
    """Features of an utterance do not depend on how far, or with what, its batch is padded."""
    x, lens = mfcc_batch(LENGTHS, 93)
    with torch.no_grad():
        batched = audio_encoder(x, lens)
        assert batched.shape == (len(LENGTHS), audio_encoder.out_dim)
        for i, L in enumerate(LENGTHS):
            alone = audio_encoder(x[i : i + 1, :L], lens[i : i + 1])
            torch.testing.assert_close(alone[0], batched[i], atol=1e-5, rtol=1e-4)
        # shorter common padding (longest in batch) and garbage past the lengths give the same features
        tight = audio_encoder(x[:, : max(LENGTHS)], lens)
        garbage = audio_encoder(*mfcc_batch(LENGTHS, 93, garbage=True))
    torch.testing.assert_close(tight, batched, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(garbage, batched, atol=1e-5, rtol=1e-4)


def test_audio_inference_path_equals_autograd_path(audio_encoder: nn.Module) -> None:
    """Without autograd, conv stacks fold each batch norm into its conv; the features must not change."""
    x, lens = mfcc_batch(LENGTHS, 93)
    with torch.no_grad():
        fast = audio_encoder(x, lens)
    torch.testing.assert_close(fast, audio_encoder(x, lens).detach(), atol=1e-5, rtol=1e-4)


def test_audio_train_mode_backward_and_long_input(audio_encoder: nn.Module) -> None:
    audio_encoder.train()
    x, lens = mfcc_batch([250, 1, 7, 120], 250)
    x.requires_grad_(True)
    out = audio_encoder(x, lens)
    assert out.shape == (4, audio_encoder.out_dim) and torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in audio_encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if getattr(audio_encoder, "input_gradient", True):
        assert (x.grad[~lengths_to_mask(lens, 250)] == 0).all(), "gradient leaked into padded frames"
    else:  # fixed features (rocket, tau=0): no gradient reaches the input, so none can leak
        assert x.grad is None


def fits(encoder: nn.Module, inputs: tuple[torch.Tensor, ...], steps: int = 60) -> float:
    """Train ``encoder`` and a linear read-out on one small batch of random labels; the accuracy reached on
    it afterwards, in eval mode (memorising 16 arbitrary labels needs features that follow the input)."""
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (inputs[0].shape[0],), generator=torch.Generator().manual_seed(1))
    head = nn.Linear(encoder.out_dim, 10)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    encoder.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(head(encoder(*inputs)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (head(encoder.eval()(*inputs)).argmax(1) == labels).float().mean().item()


@pytest.mark.parametrize("name", sorted(ALL_AUDIO))
def test_audio_encoder_overfits_a_tinymfcc_batch(name: str) -> None:
    torch.manual_seed(0)
    base, kw = ALL_AUDIO[name]
    lengths = [40, 33, 27, 21, 16, 12, 9, 5] * 2
    assert fits(build("audio_encoder", base, **kw), mfcc_batch(lengths, 40)) == 1.0


@pytest.mark.parametrize("name", sorted(zoo("image_encoder")))
def test_image_encoder_overfits_a_tinymfcc_batch(name: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert fits(build("image_encoder", name), (images,)) == 1.0


def test_overfit_check_fails_for_an_encoder_blind_to_its_input() -> None:
    class Blind(nn.Module):
        out_dim = 8

        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(8))

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(x.shape[0], -1)

    assert fits(Blind(), mfcc_batch([9, 5] * 8, 9)) < 0.5


def test_masked_batchnorm_matches_batchnorm_without_padding() -> None:
    x = torch.randn(6, 8, 11)
    bn, mbn = nn.BatchNorm1d(8).train(), MaskedBatchNorm(8).train()
    torch.testing.assert_close(mbn(x, torch.ones(6, 1, 11)), bn(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mbn.running_var, bn.running_var)
    torch.testing.assert_close(mbn.eval()(x, torch.ones(6, 1, 11)), bn.eval()(x))


@pytest.mark.parametrize("k,s", [(3, 1), (5, 1), (5, 2), (3, 2), (4, 2), (7, 3)])
def test_conv_out_lengths_matches_conv(k: int, s: int) -> None:
    conv = nn.Conv1d(1, 1, k, s, padding=k // 2)
    for L in range(1, 30):
        expected = conv(torch.zeros(1, 1, L)).shape[-1]
        assert int(conv_out_lengths(torch.tensor([L]), k, s, k // 2)) == expected


def test_masked_pooling() -> None:
    lens = torch.tensor([3, 1])
    mask = lengths_to_mask(lens, 4)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    x = torch.randn(2, 4, 5)
    x[:, 3] = 100.0
    torch.testing.assert_close(masked_mean(x, mask), torch.stack([x[0, :3].mean(0), x[1, 0]]))
    torch.testing.assert_close(masked_max(x, mask), torch.stack([x[0, :3].amax(0), x[1, 0]]))


def test_lstm_seed_recipe() -> None:
    enc = build("audio_encoder", "lstm_seed")
    assert enc.out_dim == 128 and enc.rnn.hidden_size == 50
    kinds = [type(m).__name__ for m in enc.head]
    assert kinds == [
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
    ]
    assert [m.out_features for m in enc.head if isinstance(m, nn.Linear)] == [256, 128]


@pytest.mark.parametrize("name", sorted(zoo("image_encoder")))
def test_image_encoder(name: str) -> None:
    enc = build("image_encoder", name).train()
    x = torch.randn(8, 1, 28, 28)
    out = enc(x)
    assert out.shape == (8, enc.out_dim) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert enc.eval()(x[:1]).shape == (1, enc.out_dim)


def test_image_encoder_specs() -> None:
    assert build("image_encoder", "cnn").out_dim == 128 and build("image_encoder", "lenet").out_dim == 84
    cnn_linears = [m for m in build("image_encoder", "cnn").modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in cnn_linears] == [(9216, 128)]
    resnet = build("image_encoder", "resnet")
    assert resnet.out_dim == 128 and 3e5 <= sum(p.numel() for p in resnet.parameters()) <= 1e6


@pytest.mark.parametrize("name", ["lenet", "conv", "conv_fast"])
def test_image_encoder_pools_before_relu_with_the_textbook_output(name: str) -> None:
    """The encoders max-pool before ReLU (cheaper); the textbook order (ReLU, then pool) with the same
    weights must give the same features, and the state-dict keys must stay those of that order."""
    enc = build("image_encoder", name).eval()
    randomise_norms(enc)
    mods, textbook, i = list(enc.net), [], 0
    while i < len(mods):
        if isinstance(mods[i], nn.MaxPool2d) and isinstance(mods[i + 1], nn.ReLU):
            textbook += [mods[i + 1], nn.MaxPool2d(2)]  # torch's own pool: checks the fast path too
            i += 2
        else:
            textbook.append(mods[i])
            i += 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in textbook) == 2
    reference = nn.Sequential(*textbook)
    assert list(reference.state_dict()) == list(enc.net.state_dict())
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), reference(x))


@pytest.mark.parametrize("shape", [(3, 6, 28, 28), (2, 16, 7, 7), (2, 3, 10, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_maxpool2x2_equals_torch_maxpool(shape: tuple[int, ...], channels_last: bool) -> None:
    """The no-grad path gives max_pool2d's values, layout and odd-size cropping; with autograd the gradient
    is max_pool2d's (one element per tied window: zero images tie everywhere)."""
    x = torch.randn(shape).clamp_min(0.5)  # many ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = MaxPool2x2()(x)
    reference = nn.functional.max_pool2d(x, 2)
    assert torch.equal(fast, reference)
    assert fast.is_contiguous(memory_format=torch.channels_last) == channels_last
    grads = []
    for pool in (MaxPool2x2(), nn.MaxPool2d(2)):
        xg = x.clone().requires_grad_(True)
        pool(xg).sum().backward()
        grads.append(xg.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].sum() == reference.numel()


@pytest.mark.parametrize("channels_last", [False, True])
def test_lenet_inference_path_equals_autograd_path(channels_last: bool) -> None:
    torch.manual_seed(0)
    enc, x = build("image_encoder", "lenet").eval(), torch.randn(8, 1, 28, 28)
    if channels_last:
        enc, x = enc.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = enc(x)
    torch.testing.assert_close(fast, enc(x).detach(), atol=1e-5, rtol=1e-5)


class IgnoresLengths(nn.Module):
    """A broken encoder: pools over every frame, padding included."""

    out_dim = 13

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def test_contract_catches_an_encoder_config_that_ignores_lengths(tmp_path) -> None:
    """An encoder added as a YAML alone is contract-tested; one whose class ignores lengths fails."""
    (tmp_path / "audio_encoder").mkdir()
    (tmp_path / "audio_encoder" / "mean_of_all.yaml").write_text(
        "# @package model.audio_encoder\n_target_: tests.test_encoders.IgnoresLengths\n"
    )
    assert sorted(zoo("audio_encoder", tmp_path)) == ["mean_of_all"]
    with pytest.raises(AssertionError):
        assert_padding_invariant(build("audio_encoder", "mean_of_all", tmp_path).eval())


def test_config_overrides_reach_the_encoder() -> None:
    enc = build("audio_encoder", "crnn", channels=[32, 32])
    assert enc.out_dim == 128 and enc(*mfcc_batch([5, 2], 5)).shape == (2, 128)
    mlp = MLP(10, [16, 8], None, dropout=0.1, batchnorm=True)
    assert mlp.out_dim == 8 and mlp(torch.randn(4, 10)).shape == (4, 8)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, True), (2, False)])
def test_masked_rnn_equals_packed_torch_rnn(
    cell: str, num_layers: int, bidirectional: bool, packed: bool
) -> None:
    """Same weights as nn.GRU/nn.LSTM (loaded through their state-dict names): same per-frame outputs and
    final states as the packed reference, whatever is in the padding."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from mmdigits.models.rnn import MaskedRNN

    torch.manual_seed(0)
    ref = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](
        13, 8, num_layers, batch_first=True, bidirectional=bidirectional
    )
    ours = MaskedRNN(cell, 13, 8, num_layers, bidirectional, packed=packed)
    ours.load_state_dict(ref.state_dict())
    x, lens = mfcc_batch(LENGTHS, 93, garbage=True)
    out_ref, h = ref(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))
    out_ref, _ = pad_packed_sequence(out_ref, batch_first=True, total_length=93)
    h = h[0] if cell == "lstm" else h
    dirs = 2 if bidirectional else 1
    last_ref = torch.cat(list(h[-dirs:]), dim=-1)
    with torch.no_grad():
        out, last = ours(x, lens)
    valid = lengths_to_mask(lens, 93)
    torch.testing.assert_close(out[valid], out_ref[valid].detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last, last_ref.detach(), atol=1e-5, rtol=1e-4)
    assert ours.out_dim == 8 * dirs


def test_reverse_within_lengths_is_an_involution() -> None:
    from mmdigits.models.rnn import reverse_within_lengths

    x = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    r = reverse_within_lengths(x, torch.tensor([3, 1]))
    assert r[..., 0].tolist() == [[2.0, 1.0, 0.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    torch.testing.assert_close(reverse_within_lengths(r, torch.tensor([3, 1])), x)
