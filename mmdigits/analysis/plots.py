"""Figures of a run report: validation curves and the best run's confusion matrix."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmdigits.analysis.runs import read_scalars
from mmdigits.errors import MMDigitsError
from mmdigits.utils.io import atomic_savefig, atomic_write_bytes
from mmdigits.utils.plain import join_key, load_yaml_data, plain_problem, shown

log = logging.getLogger("mmdigits.report")


CURVES = (("val/acc", "validation accuracy"), ("val/loss", "validation loss"))


def _split_label(label: str, facet_key: str | None) -> tuple[str, str]:
    """(facet, line) of a group label ``k1=v1 k2=v2 ...``: the facet is ``facet_key``'s part."""
    if facet_key is None:
        return "", label
    parts = label.split(" ")
    facet = next((p for p in parts if p.startswith(f"{facet_key}=")), "")
    return facet, " ".join(p for p in parts if p != facet) or facet


def _facet_key(labels: list[str]) -> str | None:
    """With two or more naming keys, one panel per value of the key with the fewest values (>= 2)."""
    keyed = [dict(p.split("=", 1) for p in label.split(" ") if "=" in p) for label in labels]
    keys = [k for k in (keyed[0] if keyed else {}) if all(k in d for d in keyed)]
    counts = {k: len({d[k] for d in keyed}) for k in keys}
    options = [k for k in keys if counts[k] >= 2]
    return min(options, key=lambda k: counts[k]) if len(keys) >= 2 and options else None


def group_curves(df: pd.DataFrame, tag: str) -> dict[str, np.ndarray]:
    """Group label -> (runs, epochs) values of ``tag`` (one value per validation, cut to the shortest run)."""
    out = {}
    for label, sub in df.groupby("group", sort=False):
        series = [c[tag][1] for c in (read_scalars(d, [tag]) for d in sub["dir"]) if tag in c]
        if series:
            n = min(len(s) for s in series)
            out[label] = np.stack([s[:n] for s in series])
    return out


def _value_order(facet: str) -> tuple[int, float, str]:
    """Panels in the order of their values: numbers by size (lr=0.001 before lr=0.01), then names."""
    value = facet.rsplit("=", 1)[-1]
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def plot_curves(df: pd.DataFrame, path: Path) -> Path:
    """One line per group (mean over its seeds) with a min-max band, per validation metric; with groups named
    by two or more choices, one column of panels per value of one of them. A shared legend on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = {tag: group_curves(df, tag) for tag, _ in CURVES}
    labels = list(dict.fromkeys(df["group"]))
    facet_key = _facet_key(labels)
    facets = sorted({_split_label(g, facet_key)[0] for g in labels}, key=_value_order)
    lines = list(dict.fromkeys(_split_label(g, facet_key)[1] for g in labels))
    colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    fig, axes = plt.subplots(
        len(CURVES),
        len(facets),
        figsize=(3.6 * len(facets) + 1.8, 5.8),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    for row, (tag, title) in enumerate(CURVES):
        for label, values in curves[tag].items():
            facet, line = _split_label(label, facet_key)
            ax = axes[row][facets.index(facet)]
            x = np.arange(1, values.shape[1] + 1)
            colour = colours(lines.index(line) % colours.N)
            ax.plot(x, values.mean(0), color=colour, lw=1.6, label=line)
            ax.fill_between(x, values.min(0), values.max(0), color=colour, alpha=0.18, lw=0)
        for col, facet in enumerate(facets):
            ax = axes[row][col]
            ax.grid(alpha=0.3)
            ax.set_title(f"{title}{', ' + facet if facet else ''}", fontsize=9)
            if row == len(CURVES) - 1:
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _zoom(axes[row][0], curves[tag], tag)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    fig.legend(
        [handles[line] for line in lines if line in handles], [line for line in lines if line in handles],
        loc="upper center", ncol=min(len(lines), 5), fontsize=8, frameon=False,
        title=f"mean over seeds (line), min-max (band){'; panels: ' + facet_key if facet_key else ''}",
        title_fontsize=8,
    )  # fmt: skip
    rows_of_legend = -(-len(lines) // 5)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.05 + 0.035 * rows_of_legend)))
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def _zoom(ax: Any, curves: dict[str, np.ndarray], tag: str) -> None:
    """Accuracy near 1 and losses near 0 hide their differences: show the range after the first epoch."""
    later = [v[:, 1:] for v in curves.values() if v.shape[1] > 1]
    if not later:
        return
    low, high = min(float(v.min()) for v in later), max(float(v.max()) for v in later)
    pad = 0.05 * (high - low or 1e-3)
    if tag.endswith("acc"):
        ax.set_ylim(low - pad, min(1.0 + pad, high + pad))
    else:
        ax.set_ylim(max(0.0, low - pad), high + pad)


# ----------------------------------------------------------------------------- confusion
DATAMODULE = "mmdigits.data.datamodule.MMDigitsDataModule"


def run_data_settings(run_dir: str | Path) -> dict[str, Any]:
    """The run's data settings as plain data: ``run.json``'s (resolved by ``train``), else the data section
    of ``.hydra/config.yaml`` when it holds no interpolation. Never resolved, never built from."""
    from mmdigits.data.datamodule import MMDigitsDataModule
    from mmdigits.utils.rundir import RUN_FILE, read_run_file

    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).is_file():
        data = read_run_file(run_dir).get("data")
    else:
        config = load_yaml_data(run_dir / ".hydra" / "config.yaml")
        data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        raise FileNotFoundError(f"{run_dir}: no data settings recorded ({RUN_FILE})")
    params = set(inspect.signature(MMDigitsDataModule).parameters)
    target = data.get("_target_", DATAMODULE)
    unknown = [k for k in data if k not in params and k != "_target_"]
    why = plain_problem(data, "data")
    if why is None and target != DATAMODULE:
        why = f"data._target_ is {shown(target)}"
    if why is None and unknown:
        why = f"{join_key('data', unknown[0])} is not a parameter"
    if why is not None:
        raise MMDigitsError(f"{run_dir}: its data settings are not plain {DATAMODULE} settings: {why}")
    return {k: v for k, v in data.items() if k != "_target_"}


def run_datamodule(run_dir: str | Path, task: str) -> Any:
    """The run's datamodule from its plain data settings (set up for test; never builds)."""
    from mmdigits.data.datamodule import MMDigitsDataModule

    dm = MMDigitsDataModule(**{**run_data_settings(run_dir), "task": task})
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
        for batch in dm.whole_test_dataloader():
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
    atomic_savefig(fig, path, dpi=110)
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
            # relative to the report when it lies below it (the report then moves with its runs), else under
            # the run's name in the tables: a shared report shows no one's home directory
            ckpt = Path(best["ckpt"]).absolute()
            here, run = path.parent.absolute(), Path(best["dir"]).absolute()
            if ckpt.is_relative_to(here):
                shown = ckpt.relative_to(here)
            elif ckpt.is_relative_to(run):
                shown = Path(best["run"]) / ckpt.relative_to(run)
            else:
                shown = ckpt
            return f"recomputed from `{shown}` on the test split"
        except Exception as err:  # missing data dir, unreadable checkpoint...
            log.warning("cannot recompute the confusion matrix (%s); using the logged one", err)
    png = logged_confusion_png(best["dir"])
    if png is None:
        return "not available (no checkpoint/test data and no logged test/confusion_matrix)"
    atomic_write_bytes(path, png)
    return "the `test/confusion_matrix` image logged during training"
