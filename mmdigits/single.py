"""Score one image/recording pair: ``python -m mmdigits.predict ckpt_path=... image=d.png audio=d.wav``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import librosa
import torch
from omegaconf import DictConfig

from mmdigits.data.media import MfccSettings, load_digit_image, wav_mfcc
from mmdigits.errors import MMDigitsError
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.models.module import MultimodalModule

log = logging.getLogger("mmdigits.single")


def mfcc_settings_for(model: MultimodalModule, name: str = "checkpoint") -> MfccSettings:
    """The MFCC settings the model's training audio used; MMDigitsError when raw audio cannot be matched."""
    info = model.hparams.get("data_info") or {}
    if not info:
        raise MMDigitsError(
            f"{name}: stores no data info (trained before it was recorded), so the MFCC settings of its "
            "training audio are unknown and a raw wav cannot be scored; retrain it to score audio"
        )
    mfcc = info.get("mfcc")
    if info.get("audio") != "fsdd" or not mfcc:
        raise MMDigitsError(
            f"{name}: trained on the precomputed MFCC of the {info.get('audio')!r} corpus "
            f"({info.get('dir')}), "
            "which cannot be reproduced from a raw wav; this model cannot read raw audio "
            "(use a model trained with data=fsdd, or give only image= to an image model)"
        )
    settings = MfccSettings(sr=mfcc["sr"], n_mfcc=mfcc["n_mfcc"], n_fft=mfcc["n_fft"], n_mels=mfcc["n_mels"])
    if settings.hop_length != mfcc.get("hop_length", settings.hop_length):
        raise MMDigitsError(f"{name}: MFCC hop length {mfcc['hop_length']} is not supported here")
    if mfcc.get("librosa") and mfcc["librosa"] != librosa.__version__:
        log.warning("MFCC computed with librosa %s; trained with %s", librosa.__version__, mfcc["librosa"])
    return settings


def make_batch(
    model: MultimodalModule,
    image: str | os.PathLike[str] | None,
    audio: str | os.PathLike[str] | None,
    name: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """A one-pair batch (raw scale, as the datamodule produces) with the modalities the model reads."""
    needs = {"image": model.image_encoder is not None, "audio": model.audio_encoder is not None}
    given = {"image": image, "audio": audio}
    missing = [m for m in needs if needs[m] and not given[m]]
    if missing:
        args = " ".join(f"{m}=..." for m in needs if needs[m])
        raise MMDigitsError(f"{name}: a {model.task!r} model reading {missing} needs {args}")
    for m in needs:
        if given[m] and not needs[m]:
            log.warning("%s=%s ignored: the model does not read the %s", m, given[m], m)
    batch: dict[str, torch.Tensor] = {}
    if needs["image"]:
        pixels = torch.from_numpy(load_digit_image(image).astype("float32"))  # type: ignore[arg-type]
        batch["image"] = pixels.reshape(1, 1, 28, 28)
    if needs["audio"]:
        mfcc = torch.from_numpy(wav_mfcc(Path(audio), mfcc_settings_for(model, name)))  # type: ignore[arg-type]
        batch["audio"], batch["lengths"] = mfcc.unsqueeze(0), torch.tensor([len(mfcc)])
    return batch


@torch.no_grad()
def predict_pair(
    model: MultimodalModule,
    image: str | os.PathLike[str] | None = None,
    audio: str | os.PathLike[str] | None = None,
    name: str = "checkpoint",
) -> dict[str, Any]:
    """Match probability (match task) or digit, plus each modality's digit where the model has heads."""
    model.eval()
    batch = make_batch(model, image, audio, name)
    proba = model.predict_proba(batch)[0]
    out: dict[str, Any] = {"task": model.task}
    if model.task == "match":
        out["match_probability"] = float(proba)
    else:
        out["digit"], out["digit_probability"] = int(proba.argmax()), float(proba.max())
    aux = model._aux_logits(model.features(batch))
    if aux is not None:
        digit_heads = model.task != "match" or model.hparams.aux_digit_weight > 0
        out["head_kind"] = "digit" if digit_heads else "latent class (not trained on digits)"
        out["modalities"] = {
            m: {"digit": int(p.argmax()), "probability": float(p.max())}
            for m, p in zip(model._modality_names(), (lg.softmax(-1)[0] for lg in aux))
        }
    return out


def format_result(res: dict[str, Any]) -> str:
    if "match_probability" in res:
        p = res["match_probability"]
        lines = [f"match probability: {p:.4f} ({'match' if p > 0.5 else 'no match'})"]
    else:
        lines = [f"predicted digit: {res['digit']} (p={res['digit_probability']:.3f})"]
    for m, r in res.get("modalities", {}).items():
        lines.append(f"{m} {res['head_kind']}: {r['digit']} (p={r['probability']:.3f})")
    return "\n".join(lines)


def predict_single(cfg: DictConfig) -> dict[str, Any]:
    model = load_checkpoint_model(cfg.ckpt_path)
    res = predict_pair(model, cfg.get("image"), cfg.get("audio"), name=str(cfg.ckpt_path))
    print(format_result(res), flush=True)
    return res
