"""Ensembles of trained checkpoints: the mean of the members' probabilities for each row.

``python -m mmdigits.evaluate ckpt_path=[a.ckpt,b.ckpt]`` scores an ensemble on the test split (``split=val``:
on the validation part every member's training carved, see :func:`check_validation_part`), and
``python -m mmdigits.predict ckpt_path=[a.ckpt,b.ckpt]`` writes its submission. Members must solve the same
task on the same audio corpus; each reads its own modalities and normalisation from its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mmdigits.errors import CheckpointError
from mmdigits.models.loading import checkpoint_paths, load_model_and_data, read_checkpoint
from mmdigits.models.module import MultimodalModule
from mmdigits.tasks import Task

EPS = 1e-7


def check_members(models: Sequence[MultimodalModule], paths: Sequence[str | Path]) -> None:
    """Every member must answer the same task, on the same audio corpus, as the first."""

    def corpus(model: MultimodalModule) -> Any:
        return (model.hparams.get("data_info") or {}).get("audio")

    task, audio = models[0].task.name, corpus(models[0])
    for model, path in zip(models[1:], paths[1:]):
        if model.task.name != task:
            raise CheckpointError(
                f"{path}: an ensemble member trained for the {model.task.name!r} task, but {paths[0]} was "
                f"trained for {task!r}; every member must solve the same task"
            )
        if audio and corpus(model) and corpus(model) != audio:
            raise CheckpointError(
                f"{path}: an ensemble member trained on {corpus(model)!r} audio, but {paths[0]} on {audio!r}"
            )


def load_members_and_data(cfg: Any) -> tuple[list[str], list[MultimodalModule], Any]:
    """``cfg.ckpt_path``'s paths (one, or a list: an ensemble), their models, checked to fit together, and the
    first one's datamodule."""
    paths = checkpoint_paths(cfg.ckpt_path)
    loaded = [load_model_and_data(cfg, p) for p in paths]
    models = [m for m, _ in loaded]
    check_members(models, paths)
    return paths, models, loaded[0][1]


def row_proba(trainer: L.Trainer, model: MultimodalModule, loader: Any) -> Tensor:
    """``model``'s probabilities for ``loader``'s rows, in row order (the loader's ``index``)."""
    outputs = trainer.predict(model, dataloaders=loader)
    index = torch.cat([o["index"] for o in outputs])
    return torch.cat([o["proba"].float() for o in outputs])[torch.argsort(index)]


def rows_and_targets(loader: Any) -> tuple[Tensor, Tensor]:
    """``loader``'s row indices (its pairs' own, sorted) and their targets."""
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches])
    order = torch.argsort(index)
    return index[order], torch.cat([b["target"] for b in batches])[order]


def mean_proba(trainer: L.Trainer, models: Sequence[MultimodalModule], loader: Any) -> Tensor:
    return torch.stack([row_proba(trainer, m, loader) for m in models]).mean(0)


def nll(task: Task, proba: Tensor, target: Tensor) -> float:
    """Mean negative log-likelihood of the targets under ``proba``: their cross-entropy."""
    if task.binary:
        p = proba.clamp(EPS, 1 - EPS)
        t = target.float()
        return float(-(t * p.log() + (1 - t) * (1 - p).log()).mean())
    return float(-proba.gather(1, target.long().unsqueeze(1)).clamp_min(EPS).log().mean())


def score(task: Task, proba: Tensor, target: Tensor, prefix: str = "test/") -> dict[str, float]:
    """The task's metrics (as a single model's run logs them) and the NLL of ``proba``."""
    metrics = task.metrics().clone(prefix=prefix)
    metrics.update(proba, target.long())
    out = {k: float(v) for k, v in metrics.compute().items()}
    out[f"{prefix}nll"] = nll(task, proba, target)
    return out


def score_ensemble(
    trainer: L.Trainer, models: Sequence[MultimodalModule], loader: Any, prefix: str = "test/"
) -> tuple[dict[str, Any], Tensor]:
    """The ensemble's metrics on ``loader``'s rows, plus each member's accuracy (``<prefix>member_acc``), and
    its prediction rows (index, target, decision, probability; as a run's ``test_predictions.npy``)."""
    index, target = rows_and_targets(loader)
    probas = [row_proba(trainer, m, loader) for m in models]
    task, mean = models[0].task, torch.stack(probas).mean(0)
    metrics: dict[str, Any] = score(task, mean, target, prefix)
    metrics[f"{prefix}member_acc"] = [score(task, p, target, prefix)[f"{prefix}acc"] for p in probas]
    return metrics, task.prediction_rows(index, target, mean)


# what carves a build's validation part: the data settings, as a run's datamodule saved them in its checkpoint
VALIDATION_KEYS = ("val_fraction", "seed", "split", "folds", "fold", "image_split")


def check_validation_part(data: Any, paths: Sequence[str | Path]) -> None:
    """Refuse to score on validation unless ``data`` (the command's data config) carves the validation part
    each checkpoint's run held out, from a build with the same settings: with another fraction, seed or fold,
    or a member that held out other rows, some validation rows would be rows a model trained on."""
    from mmdigits.data.build import read_manifest

    held = ((read_manifest(data.dir) or {}).get("settings")) or None
    for path in paths:
        ckpt = read_checkpoint(path)
        carved = ckpt.get("datamodule_hyper_parameters")
        if not isinstance(carved, dict):
            raise CheckpointError(
                f"{path}: does not record how its run carved its validation part; split=val needs a "
                "checkpoint written by python -m mmdigits.train"
            )
        for key in VALIDATION_KEYS:
            if key in carved and carved[key] != data.get(key):
                raise CheckpointError(
                    f"{path}: its run carved validation with data.{key}={carved[key]!r}, but this command "
                    f"has data.{key}={data.get(key)!r}; pass the run's data settings (members must agree)"
                )
        build = (ckpt["hyper_parameters"].get("data_info") or {}).get("build")
        if build and held and build != held:
            raise CheckpointError(
                f"{path}: was trained on a build with settings {build}, but {data.dir} holds one with {held}"
            )
