"""Figures of a run report: validation curves and the best run's confusion matrix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mmdigits.analysis.runs import read_scalars

log = logging.getLogger("mmdigits.report")


def plot_curves(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab10" if len(df) <= 10 else "tab20")
    for i, (_, r) in enumerate(df.iterrows()):
        curves = read_scalars(r["dir"], ["val/acc", "val/loss"])
        for ax, tag in zip(axes, ["val/acc", "val/loss"]):
            if tag in curves:
                ax.plot(*curves[tag], marker=".", color=colours(i % colours.N), label=r["run"])
    for ax, tag in zip(axes, ["validation accuracy", "validation loss"]):
        ax.set(xlabel="step", title=tag)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- confusion
def run_datamodule(run_dir: str | Path, task: str) -> Any:
    """The run's datamodule from its ``.hydra/config.yaml`` data section (set up for test; never builds)."""
    from hydra.utils import instantiate

    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dm = instantiate(data, task=task, _convert_="all")
    if not (Path(dm.dir) / "written_test.npy").is_file() or not dm.has_test_labels:
        raise FileNotFoundError(f"{dm.dir}: no labelled test split to recompute the confusion matrix")
    dm.setup("test")
    return dm


def confusion_matrix(run_dir: str | Path, ckpt: str | Path) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) of the checkpoint on its run's test split."""
    import torch
    from sklearn.metrics import confusion_matrix as sk_confusion

    from mmdigits.models.loading import load_checkpoint_model

    model = load_checkpoint_model(ckpt)
    dm = run_datamodule(run_dir, model.task.name)
    preds, targets = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            preds.append(model.task.labels(model(batch)))
            targets.append(batch["target"].long())
    labels = list(range(len(model.task.class_names)))
    return sk_confusion(torch.cat(targets).numpy(), torch.cat(preds).numpy(), labels=labels)


def plot_confusion(cm: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ticks = ["no match", "match"] if len(cm) == 2 else [str(d) for d in range(len(cm))]
    ax.set(xticks=range(len(cm)), yticks=range(len(cm)), xticklabels=ticks, yticklabels=ticks)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def logged_confusion_png(run_dir: str | Path) -> bytes | None:
    """The ``test/confusion_matrix`` image logged at test time, as PNG bytes (fallback)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tensorboard"
    if not tb.is_dir():
        return None
    acc = EventAccumulator(str(tb), size_guidance={"images": 0}).Reload()
    if "test/confusion_matrix" not in acc.Tags()["images"]:
        return None
    return acc.Images("test/confusion_matrix")[-1].encoded_image_string


def write_confusion(best: pd.Series, path: Path) -> str:
    """confusion.png for the best run; returns how it was made."""
    title = f"{best['run']} (test split)"
    if best.get("ckpt"):
        try:
            plot_confusion(confusion_matrix(best["dir"], best["ckpt"]), path, title)
            return f"recomputed from `{best['ckpt']}` on the test split"
        except Exception as err:  # missing data dir, unreadable checkpoint...
            log.warning("cannot recompute the confusion matrix (%s); using the logged one", err)
    png = logged_confusion_png(best["dir"])
    if png is None:
        return "not available (no checkpoint/test data and no logged test/confusion_matrix)"
    path.write_bytes(png)
    return "the `test/confusion_matrix` image logged during training"
