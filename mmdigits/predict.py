"""Write the challenge's submission file: ``python -m mmdigits.predict ckpt_path=... data.dir=...``.

``result.npy`` holds one boolean per test pair (match task) or one digit per pair (digit tasks), in the
order of ``written_test.npy``/``spoken_test.npy``. With ``image=`` and/or ``audio=`` it scores one pair
instead and prints the answer (``python -m mmdigits.predict ckpt_path=... image=d.png audio=d.wav``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mmdigits.data.challenge import Utterances
from mmdigits.data.dataset import make_batch, pad_utterances
from mmdigits.data.media import MfccSettings, audio_module, load_digit_image, wav_mfcc
from mmdigits.errors import DataError, MMDigitsError
from mmdigits.models.ensemble import load_members_and_data, mean_proba
from mmdigits.models.loading import apply_test_time_shifts, load_checkpoint_model, single_checkpoint_path
from mmdigits.models.module import MultimodalModule
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.io import atomic_save_npy
from mmdigits.utils.rundir import claim_output_dir, claimed

log = logging.getLogger("mmdigits.predict")


def predict(cfg: DictConfig) -> np.ndarray:
    """Predict every test pair of ``cfg.data`` (a list ``ckpt_path``: the ensemble's mean probability); saves
    and returns the result array."""
    _, models, datamodule = load_members_and_data(cfg)
    model = models[0]
    out = Path(cfg.output)
    if out.is_dir():
        raise MMDigitsError(f"{out}: is a directory; expected the path of the .npy file to write (output=)")
    trainer: L.Trainer = instantiate(cfg.trainer)
    datamodule.prepare_data()
    datamodule.setup("predict")
    if not len(datamodule.test_set):
        raise DataError(f"{datamodule.dir / 'written_test.npy'}: the test split has no rows to predict")
    start = time.perf_counter()
    proba = mean_proba(trainer, models, datamodule.predict_dataloader())
    seconds = time.perf_counter() - start
    result = model.task.submission(proba)
    atomic_save_npy(out, result)
    log.info(
        "wrote %s: %d predictions in %.2f s (%.0f pairs/s)", out, len(result), seconds, len(result) / seconds
    )
    if model.task.binary:
        log.info("predicted match rate: %.4f", float(result.mean()))
    return result


# ----------------------------------------------------------------------------- one pair
def mfcc_settings_for(model: MultimodalModule, name: str = "checkpoint") -> MfccSettings:
    """The MFCC settings the model's training audio used; MMDigitsError when raw audio cannot be matched."""
    librosa = audio_module("librosa")

    info = model.hparams.get("data_info") or {}
    if not info:
        raise MMDigitsError(
            f"{name}: stores no data info (trained before it was recorded), so the MFCC settings of its "
            "training audio are unknown and a raw wav cannot be scored; retrain it to score audio"
        )
    mfcc = info.get("mfcc")
    if not mfcc:
        raise MMDigitsError(
            f"{name}: trained on the precomputed MFCC of the {info.get('audio')!r} corpus "
            f"({info.get('dir')}), which cannot be reproduced from a raw wav; this model cannot read raw "
            "audio (use a model trained with data=fsdd, or give only image= to an image model)"
        )
    settings = MfccSettings(sr=mfcc["sr"], n_mfcc=mfcc["n_mfcc"], n_fft=mfcc["n_fft"], n_mels=mfcc["n_mels"])
    if settings.hop_length != mfcc.get("hop_length", settings.hop_length):
        raise MMDigitsError(f"{name}: MFCC hop length {mfcc['hop_length']} is not supported here")
    if mfcc.get("librosa") and mfcc["librosa"] != librosa.__version__:
        log.warning("MFCC computed with librosa %s; trained with %s", librosa.__version__, mfcc["librosa"])
    return settings


def pair_batch(
    model: MultimodalModule,
    image: str | os.PathLike[str] | None,
    audio: str | os.PathLike[str] | None,
    name: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """A one-pair batch (raw scale, as the datamodule makes them) with the modalities the model reads."""
    given = {"image": image, "audio": audio}
    missing = [m for m in model.modalities if not given[m]]
    if missing:
        args = " ".join(f"{m}=..." for m in model.modalities)
        raise MMDigitsError(f"{name}: a {model.task.name!r} model reading {missing} needs {args}")
    for m, value in given.items():
        if value and m not in model.modalities:
            log.warning("%s=%s ignored: the model does not read the %s", m, value, m)
    pixels = load_digit_image(image)[None] if "image" in model.modalities else None  # type: ignore[arg-type]
    padded = None
    if "audio" in model.modalities:
        utt = Utterances.from_arrays([wav_mfcc(Path(audio), mfcc_settings_for(model, name))])  # type: ignore[arg-type]
        frames = torch.from_numpy(utt.frames)
        padded = pad_utterances(frames, torch.from_numpy(utt.offsets), torch.from_numpy(utt.lengths))
    return make_batch(images=pixels, audio=padded)


@torch.no_grad()
def predict_pair(
    model: MultimodalModule,
    image: str | os.PathLike[str] | None = None,
    audio: str | os.PathLike[str] | None = None,
    name: str = "checkpoint",
) -> dict[str, Any]:
    """The task's answer for one pair, plus each modality's digit where the model has per-modality heads."""
    model.eval()
    out = model.infer(pair_batch(model, image, audio, name))
    res: dict[str, Any] = {
        "task": model.task.name,
        **model.task.summary(model.task.proba(model.decision_logits(out.logits))[0]),
    }
    if out.modality_logits is not None:
        digit_heads = not model.task.binary or model.hparams.aux_digit_weight > 0
        res["head_kind"] = "digit" if digit_heads else "latent class (not trained on digits)"
        res["modalities"] = {
            m: {"digit": int(p.argmax()), "probability": float(p.max())}
            for m, p in zip(model.modalities, (lg.softmax(-1)[0] for lg in out.modality_logits))
        }
    return res


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
    path = single_checkpoint_path(cfg.ckpt_path, "one pair (image=/audio=)")
    model = load_checkpoint_model(path, trust=bool(cfg.get("trust_checkpoint", False)))
    apply_test_time_shifts(model, cfg)
    res = predict_pair(model, cfg.get("image"), cfg.get("audio"), name=path)
    print(format_result(res), flush=True)
    return res


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@clean_errors
def main(cfg: DictConfig) -> None:
    with claimed(cfg, claim_output_dir):
        if cfg.get("image") or cfg.get("audio"):
            predict_single(cfg)
        else:
            predict(cfg)


if __name__ == "__main__":
    main()
