"""Load a trained model from a checkpoint without running code from it, with clear errors.

A checkpoint is read with torch's weights-only unpickler (plain containers and tensors only). Its
hyperparameters are then checked as plain data (:mod:`mmdigits.models.safe_hparams`): literal strings, zoo
classes and the configs' optimisers and schedulers only, each key a parameter of its target. Anything else is
refused before anything is built. ``trust=True`` reads a legacy checkpoint (written before hyperparameters
were plain data) with the full unpickler: only for files you trust.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from mmdigits.errors import CheckpointError, MMDigitsError, first_line
from mmdigits.models.module import OPTIONAL_BUFFERS, MultimodalModule, plain
from mmdigits.models.safe_hparams import check_hparams

# classes renamed since checkpoints were first written: old target -> (new target, extra kwargs)
RENAMED: dict[str, tuple[str, dict[str, Any]]] = {
    "mmdigits.models.image.CNN": ("mmdigits.models.image.CNNEncoder", {}),
    "mmdigits.models.image.LeNet": ("mmdigits.models.image.LeNetEncoder", {}),
    "mmdigits.models.image.ResNet": ("mmdigits.models.image.ResNetEncoder", {}),
    "mmdigits.models.fusion.LateFusion": ("mmdigits.models.fusion.AgreementFusion", {"calibrate": True}),
}
RENAMED_KWARGS = {"mmdigits.models.fusion.AgreementFusion": {"n_latent": "n_classes"}}
TRUST_HINT = "pass +trust_checkpoint=true only for a file you trust: loading it can run code"


def read_checkpoint(path: str | Path, map_location: str = "cpu", trust: bool = False) -> dict[str, Any]:
    """The checkpoint dict at ``path``, its hyperparameters checked as plain data; CheckpointError when
    missing, unreadable, unsafe or not ours. Every reader of a checkpoint goes through here."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; expected a .ckpt file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        asked = re.search(r"GLOBAL ([\w.]+)", str(err))
        if asked:
            raise CheckpointError(
                f"{path}: refuses to load: the checkpoint asks for {asked.group(1)}, which is not plain data "
                f"or a tensor (a checkpoint of an older mmdigits, or a crafted file); {TRUST_HINT}"
            ) from err
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?)") from err
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = first_line(err)
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {first}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not an mmdigits checkpoint (no state_dict/hyper_parameters)")
    ckpt["hyper_parameters"] = model_kwargs(ckpt["hyper_parameters"], path)
    return ckpt


def _renamed(cfg: Any) -> Any:
    """``cfg`` with legacy class names (and their renamed arguments) updated."""
    if isinstance(cfg, list):
        return [_renamed(v) for v in cfg]
    if not isinstance(cfg, dict):
        return cfg
    out = {k: _renamed(v) for k, v in cfg.items()}
    target = out.get("_target_")
    if not isinstance(target, str):
        return out
    if target in RENAMED:
        target, extra = RENAMED[target]
        out = {**extra, **out, "_target_": target}
    for old, new in RENAMED_KWARGS.get(target, {}).items():
        if old in out:
            out[new] = out.pop(old)
    return out


def model_kwargs(hparams: Any, path: str | Path) -> dict[str, Any]:
    """The checkpoint's hyperparameters as keyword arguments of ``MultimodalModule``, checked as plain data
    (:func:`~mmdigits.models.safe_hparams.check_hparams`) before anything is built from them."""
    hparams = plain(dict(hparams) if isinstance(hparams, DictConfig) else hparams)
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: refuses to load: its hyper_parameters are not a mapping")
    kwargs = {k: _renamed(plain(v)) for k, v in hparams.items()}
    check_hparams(kwargs, path)
    return kwargs


def check_resume_checkpoint(path: str | Path, model: MultimodalModule, trust: bool = False) -> None:
    """Fail early, with one line, when ``path`` cannot resume ``model`` (corrupt, or another model config)."""
    ckpt = read_checkpoint(path, trust=trust)
    if "loops" not in ckpt or "optimizer_states" not in ckpt:
        raise CheckpointError(f"{path}: holds weights only (no training state), so it cannot resume a run")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    problems = [f"missing {k}" for k in expected if k not in found and k not in OPTIONAL_BUFFERS]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k} {found[k]} != {v}" for k, v in expected.items() if k in found and found[k] != v]
    if problems:
        shown = ", ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise CheckpointError(
            f"{path}: weights do not fit this run's model config "
            f"(a checkpoint from a different model config?): {shown}"
        )


def load_checkpoint_model(
    path: str | Path, map_location: str = "cpu", trust: bool = False
) -> MultimodalModule:
    """Rebuild a ``MultimodalModule`` from ``path`` alone (hyperparameters + weights + buffers)."""
    path = Path(path)
    ckpt = read_checkpoint(path, map_location, trust)
    try:
        model = MultimodalModule(**ckpt["hyper_parameters"])
    except Exception as err:  # bad kwargs for a zoo class, an unknown task...
        first = first_line(err, 300)
        raise CheckpointError(f"{path}: its model config cannot be built here: {first}") from err
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        first = first_line(err)
        raise CheckpointError(
            f"{path}: weights do not fit the model config stored with them "
            f"(a checkpoint from a different model config?): {first}"
        ) from err
    model.eval()
    return model


def checkpoint_paths(ckpt_path: Any) -> list[str]:
    """``ckpt_path`` as a list: one path, or a list of them (an ensemble)."""
    paths = (
        [str(p) for p in ckpt_path] if isinstance(ckpt_path, (list, tuple, ListConfig)) else [str(ckpt_path)]
    )
    if not paths:
        raise MMDigitsError("ckpt_path=[]: give one checkpoint, or a list of them for an ensemble")
    return paths


def single_checkpoint_path(ckpt_path: Any, what: str = "this command") -> str:
    """``ckpt_path`` when it names one checkpoint (a list of one is that checkpoint); an error naming ``what``
    for a list."""
    paths = checkpoint_paths(ckpt_path)
    if len(paths) > 1:
        raise MMDigitsError(f"ckpt_path: {what} takes one checkpoint, not a list of {len(paths)}")
    return paths[0]


def apply_test_time_shifts(model: MultimodalModule, cfg: DictConfig) -> None:
    """``test_time_shifts=true|false`` (evaluate, predict) overrides the checkpoint's own setting."""
    if cfg.get("test_time_shifts") is not None:
        model.hparams["test_time_shifts"] = bool(cfg.test_time_shifts)


def load_model_and_data(cfg: DictConfig, path: str | Path | None = None) -> tuple[MultimodalModule, Any]:
    """The model of ``path`` (default ``cfg.ckpt_path``) and ``cfg.data``'s datamodule, set to the task the
    model was trained for.

    The checkpoint's data info decides the audio corpus: an explicit ``data.audio`` that differs, or a
    ``data.dir`` holding a build of another corpus, is an error naming both."""
    from mmdigits.data.build import read_manifest

    if path is None:
        path = single_checkpoint_path(cfg.ckpt_path)
    model = load_checkpoint_model(path, trust=bool(cfg.get("trust_checkpoint", False)))
    trained_on = (model.hparams.get("data_info") or {}).get("audio")
    asked = cfg.data.get("audio")
    held = ((read_manifest(cfg.data.dir) or {}).get("settings") or {}).get("audio")
    for what, audio in ((f"data.audio={asked!r}", asked), (f"{cfg.data.dir} holds a {held!r} build", held)):
        if trained_on and audio and audio != trained_on:
            raise CheckpointError(
                f"{path}: the model was trained on {trained_on!r} audio, but {what}; "
                f"point data.dir at a {trained_on!r} build (or leave data.audio unset)"
            )
    apply_test_time_shifts(model, cfg)
    audio = asked or trained_on
    return model, instantiate(cfg.data, task=model.task.name, audio=audio, _convert_="all")
