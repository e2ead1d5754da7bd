"""The LightningModule: prior correction for balanced sampling, validation-tuned decision point, layouts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmdigits.data.datamodule import MMDigitsDataModule
from mmdigits.models import augment as aug
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.models.module import MultimodalModule
from mmdigits.train import train
from tests.hydra_utils import compose_cfg

CNN1D = {"_target_": "mmdigits.models.audio.CNN1dEncoder"}  # the audio encoder of the module-level tests


def test_balanced_sampler_prior_is_corrected_in_eval(tmp_path, tiny_dataset_dir):
    cfg = compose_cfg(
        "train",
        [
            f"data.dir={tiny_dataset_dir}",
            "data.batch_size=32",
            "data.sampler=weighted",
            "trainer.max_epochs=1",
            "~callbacks.rich_progress_bar",
            "test=false",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    shift = float(
        torch.load(metrics["best_model_path"], weights_only=False)["state_dict"]["prior_logit_shift"]
    )
    model = load_checkpoint_model(metrics["best_model_path"])

    dm = MMDigitsDataModule(dir=str(tiny_dataset_dir), batch_size=32)
    dm.setup("fit")
    # trained at a 50 % prior on data with ~30 % positives: eval logits move by logit(p) - logit(0.5)
    assert shift == pytest.approx(math.log(dm.pos_rate / (1 - dm.pos_rate)), abs=1e-5)
    assert shift < -0.3
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        corrected = model(batch)
        raw = model.fuse(model.encode(batch)).logits
    assert torch.allclose(corrected, raw + shift, atol=1e-5)


@pytest.mark.parametrize("image_encoder", ["LeNetEncoder", "ResNetEncoder"])
def test_channels_last_changes_memory_layout_not_outputs(image_encoder):
    enc = {
        "audio_encoder": CNN1D,
        "image_encoder": {"_target_": f"mmdigits.models.image.{image_encoder}"},
        "fusion": {"_target_": "mmdigits.models.fusion.AgreementFusion"},
    }
    torch.manual_seed(0)
    nhwc = MultimodalModule(**enc, channels_last=True).eval()
    nchw = MultimodalModule(**enc, channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    conv = next(
        m for m in nhwc.image_encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (
        not conv.weight.is_contiguous()
    )  # really a different layout, so the comparison below means something
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randint(0, 256, (16, 1, 28, 28), generator=g).float(),
        "audio": torch.randn(16, 40, 13, generator=g),
        "lengths": torch.randint(5, 41, (16,), generator=g),
    }
    with torch.no_grad():
        torch.testing.assert_close(nhwc(batch), nchw(batch), atol=1e-5, rtol=1e-4)


def _match_module() -> MultimodalModule:
    return MultimodalModule(
        audio_encoder=CNN1D,
        image_encoder={"_target_": "mmdigits.models.image.LeNetEncoder"},
        fusion={"_target_": "mmdigits.models.fusion.AgreementFusion"},
        threshold_from_val=True,
    )


def test_threshold_tuned_on_validation_predictions():
    model = _match_module()
    # a too cautious model: positives at logits -3..-1, negatives at -8..-5: any shift in (3, 5) is perfect
    logits = torch.cat([torch.linspace(-3, -1, 20), torch.linspace(-8, -5, 180)])
    target = torch.cat([torch.ones(20), torch.zeros(180)]).bool()
    assert ((logits > 0) == target).float().mean() == pytest.approx(0.9)
    model._tune_threshold(logits, target)
    shift = float(model.val_logit_shift)
    assert 3 < shift < 5 and shift == pytest.approx(4.0, abs=0.1)  # the middle of the perfect range
    assert float(model.decision_shift) == pytest.approx(shift)
    # the next validation sees logits that already include the shift: it stays put
    model._tune_threshold(logits + shift, target)
    assert float(model.val_logit_shift) == pytest.approx(shift)
    model._tune_threshold(logits, torch.zeros(200, dtype=torch.bool))  # one class: nothing to tune
    assert float(model.val_logit_shift) == pytest.approx(shift)


@pytest.mark.parametrize("callbacks", ["default", "[default,ema]"])
def test_checkpoint_carries_the_shift_tuned_on_its_own_validation(callbacks, tmp_path, tiny_dataset_dir):
    """With EMA the averaged weights are validated, saved and tested: the shift tuned on their predictions
    must be theirs too (not swapped back out with the training weights, nor averaged with stale values)."""
    cfg = compose_cfg(
        "train",
        [
            f"data.dir={tiny_dataset_dir}",
            "data.batch_size=32",
            "data.sampler=weighted",
            "model.threshold_from_val=true",
            "trainer.max_epochs=2",
            f"callbacks={callbacks}",
            "~callbacks.rich_progress_bar",
            "test=false",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    model = load_checkpoint_model(metrics["best_model_path"])
    stored = float(model.val_logit_shift)
    dm = MMDigitsDataModule(dir=str(tiny_dataset_dir), batch_size=32)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    with torch.no_grad():
        logits = torch.cat([model(b) for b in batches])  # eval logits include the stored shift
    target = torch.cat([b["target"] for b in batches]).bool()
    acc = lambda x: ((x > 0) == target).float().mean()  # noqa: E731
    assert acc(logits) >= acc(logits - stored)
    model._tune_threshold(logits, target)
    assert float(model.val_logit_shift) == pytest.approx(stored, abs=0.1)


def test_checkpoint_without_the_tuned_shift_still_loads():
    model = _match_module()
    state = {k: v for k, v in model.state_dict().items() if k != "val_logit_shift"}
    fresh = _match_module()
    fresh.load_state_dict(state, strict=True)
    assert float(fresh.val_logit_shift) == 0.0


@pytest.mark.parametrize("fusion", ["agreement", "late", "concat"])
def test_one_step_runs_every_head_once(fusion):
    """The fusion's per-modality heads (or the aux probes) serve the fused logits, the aux digit loss and the
    balance term from one evaluation per step."""
    from tests.zoo import zoo

    model = MultimodalModule(
        audio_encoder=CNN1D,
        image_encoder={"_target_": "mmdigits.models.image.LeNetEncoder"},
        fusion=zoo("fusion")[fusion],
        aux_digit_weight=1.0,
        balance_weight=1.0,
    ).train()
    heads = model.fusion.heads if hasattr(model.fusion, "heads") else model.aux_heads
    calls = []
    for h in heads:
        h.register_forward_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randint(0, 256, (8, 1, 28, 28), generator=g).float(),
        "audio": torch.randn(8, 30, 13, generator=g),
        "lengths": torch.randint(5, 31, (8,), generator=g),
        "target": torch.randint(0, 2, (8,), generator=g).float(),
        "image_digit": torch.randint(0, 10, (8,), generator=g),
        "audio_digit": torch.randint(0, 10, (8,), generator=g),
    }
    loss = model._step(batch, "train")
    loss.backward()
    assert len(calls) == 2  # one call per modality head


def test_audio_warp_augments_training_batches_only():
    """model.audio_warp warps the raw coefficients in training (the encoder sees other values, zero past
    each length); evaluation reads the batch as it is."""
    model = MultimodalModule(task="audio_digit", audio_encoder=CNN1D, audio_warp=0.2)
    model.audio_mean.fill_(-3.0)  # as set from the training data: the warp must map raw MFCCs, not z-scores
    model.audio_std.fill_(2.0)
    seen = []
    model.audio_encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0].clone()))
    g = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(4, 30, 13, generator=g), "lengths": torch.tensor([30, 12, 5, 1])}
    torch.manual_seed(0)
    model.train().encode(batch)
    model.eval().encode(batch)
    trained, evaluated = seen
    pad = torch.arange(30)[None, :] >= batch["lengths"][:, None]
    assert (trained[pad] == 0).all() and (evaluated[pad] == 0).all()
    torch.testing.assert_close(evaluated[~pad], (batch["audio"][~pad] + 3.0) / 2.0)
    assert (trained[~pad] - evaluated[~pad]).abs().mean() > 0.05


def test_mixup_blends_inputs_and_labels_in_training_only(monkeypatch):
    """model.mixup_alpha: in training the encoder sees lam * x + (1 - lam) * x[partner] (zero past the longer
    length) and the loss weighs both labels alike, with label smoothing on each; evaluation is unmixed and
    unsmoothed."""
    model = MultimodalModule(
        task="audio_digit",
        audio_encoder=CNN1D,
        mixup_alpha=0.4,
        label_smoothing=0.1,
    )
    partners, lam = torch.tensor([2, 0, 3, 1]), 0.7
    monkeypatch.setattr(aug, "draw_mix", lambda n, alpha, device: (partners[:n], lam))
    seen, raw = [], []
    model.audio_encoder.register_forward_hook(lambda _m, args, _out: seen.append((args[0].clone(), args[1])))
    model.fusion.register_forward_hook(lambda _m, _args, out: raw.append(out))
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([30, 12, 5, 20])
    audio = torch.randn(4, 30, 13, generator=g) * (torch.arange(30)[None, :] < lengths[:, None])[..., None]
    batch = {"audio": audio, "lengths": lengths, "target": torch.tensor([1, 2, 3, 4])}

    loss = model.train()._step(batch, "train")
    x, mixed_lengths = seen[0]
    torch.testing.assert_close(x, 0.7 * audio + 0.3 * audio[partners])  # mean 0, std 1: z-scores = MFCCs
    assert mixed_lengths.tolist() == [30, 30, 20, 20]
    ce = torch.nn.functional.cross_entropy
    t = batch["target"]
    expected = 0.7 * ce(raw[0], t, label_smoothing=0.1) + 0.3 * ce(raw[0], t[partners], label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)

    val_loss = model.eval()._step(batch, "val")
    torch.testing.assert_close(seen[1][0], audio)
    assert seen[1][1].tolist() == lengths.tolist()
    torch.testing.assert_close(val_loss, ce(raw[1], t))  # validation reports the plain NLL


@pytest.mark.parametrize(
    "task, options, message",
    [
        ("match", {"mixup_alpha": 0.2}, "mixup_alpha.*'match' is binary"),
        ("audio_digit", {"mixup_alpha": -1.0}, "mixup_alpha >= 0.*got -1.0"),
        ("audio_digit", {"label_smoothing": 1.0}, "label_smoothing < 1.*and 1.0"),
    ],
    ids=["mixup_on_match", "negative_alpha", "smoothing_of_one"],
)
def test_mixup_and_smoothing_refuse_what_they_cannot_do(task, options, message):
    with pytest.raises(ValueError, match=message):
        MultimodalModule(task=task, audio_encoder=CNN1D, **options)


def test_label_smoothing_moves_binary_targets_towards_one_half():
    task = MultimodalModule(task="match", audio_encoder=CNN1D).task
    logits, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(task.loss(logits, target, 0.2), bce(logits, torch.tensor([0.9, 0.1, 0.9])))
    torch.testing.assert_close(task.loss(logits, target), bce(logits, target))


@pytest.mark.parametrize("task", ["image_digit", "match"])
def test_test_time_shifts_average_the_shifted_views_at_test_and_prediction_only(task):
    """model.test_time_shifts: forward and the test step use the mean probabilities of the image and its four
    1-pixel shifts; training and validation read the image as it is."""
    encoders = {"image_encoder": {"_target_": "mmdigits.models.image.CNNEncoder"}}
    if task == "match":
        encoders["audio_encoder"] = CNN1D
    model = MultimodalModule(task=task, test_time_shifts=True, aux_digit_weight=0.0, **encoders).eval()
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (6, 1, 28, 28), generator=g).float(),
        "audio": torch.randn(6, 20, 13, generator=g),
        "lengths": torch.full((6,), 20),
        "target": torch.tensor([1, 0, 1, 1, 0, 1]).float() if task == "match" else torch.arange(6),
    }
    with torch.no_grad():
        views = [batch["image"]] + [
            aug.shift_image(batch["image"], dx, dy) for dx, dy in aug.ONE_PIXEL_SHIFTS
        ]
        plain = [model.fuse(model.encode({**batch, "image": v})).logits for v in views]
        mean_p = torch.stack([model.task.proba(v) for v in plain]).mean(0)
        torch.testing.assert_close(model.task.proba(model(batch)), mean_p)
        assert not torch.allclose(mean_p, model.task.proba(plain[0]))  # the shifts do change the answer
        test_loss = model._step(batch, "test")
        torch.testing.assert_close(test_loss, model.task.loss(model.task.mean_logits(plain), batch["target"]))
        torch.testing.assert_close(model._step(batch, "val"), model.task.loss(plain[0], batch["target"]))
        model.hparams.test_time_shifts = False
        torch.testing.assert_close(model.task.proba(model(batch)), model.task.proba(plain[0]))


class _Ones(nn.Module):
    """A stand-in encoder: ``out_dim`` ones per example whatever the input (a zero can only be dropout's)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(x.shape[0], self.out_dim)


def _modality_features(p: float, n: int, train: bool = True, task: str = "match") -> list[torch.Tensor]:
    """``encode``'s features (ones unless dropped) for ``n`` examples, ``model.modality_dropout=p``."""
    lenet = {"_target_": "mmdigits.models.image.LeNetEncoder"}
    model = MultimodalModule(task=task, audio_encoder=CNN1D, image_encoder=lenet, modality_dropout=p)
    for m in model.modalities:
        setattr(model, f"{m}_encoder", _Ones({"image": 5, "audio": 3}[m]))
    batch = {"image": torch.zeros(n, 1, 28, 28), "audio": torch.zeros(n, 2, 13)}
    batch["lengths"] = torch.full((n,), 2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model.train(train).encode(batch)


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_modality_dropout_zeroes_one_whole_modality_at_its_rate(p: float) -> None:
    n = 4000
    image, audio = _modality_features(p, n)
    for f in (image, audio):
        assert ((f == 0).all(1) | (f == 1).all(1)).all(), "a modality was zeroed in part, or rescaled"
    gone_image, gone_audio = (image == 0).all(1), (audio == 0).all(1)
    assert not (gone_image & gone_audio).any(), "both modalities of one example were dropped"
    # an example loses a modality with probability p, either one as often: binomial counts, 5 sd either side
    for gone, rate in ((gone_image | gone_audio, p), (gone_image, p / 2), (gone_audio, p / 2)):
        sd = math.sqrt(n * rate * (1 - rate))
        assert abs(int(gone.sum()) - n * rate) < 5 * sd, (int(gone.sum()), n * rate, sd)


def test_modality_dropout_is_off_outside_training_at_zero_and_with_one_modality() -> None:
    for features in (
        _modality_features(0.9, 500, train=False),
        _modality_features(0.0, 500),
        _modality_features(0.9, 500, task="audio_digit"),  # the only modality is never dropped
    ):
        assert features and all((f == 1).all() for f in features)
