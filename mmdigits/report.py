"""Compare runs: ``python -m mmdigits.report logs/train/multiruns/<sweep> [more runs] [--metric test/acc]``.

Writes ``report.md`` (one row per run, plus mean ± std over seeds), ``curves.png`` (val accuracy/loss per
step) and ``confusion.png`` (best run, recomputed on the test split) into the first PATH.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

log = logging.getLogger("mmdigits.report")

COLUMNS = ["run", "model", "audio_encoder", "image_encoder", "fusion", "task", "seed", "params", "epochs",
           "wall_time_s", "val/acc_best", "test/acc", "test/f1", "test/auroc"]  # fmt: skip
SUMMARY_METRICS = ["val/acc_best", "test/acc", "test/f1", "test/auroc"]


# ----------------------------------------------------------------------------- reading runs
def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (holding ``metrics.json``) at or below each path, in order, without duplicates."""
    runs: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run or multirun directory")
        found = [p] if (p / "metrics.json").is_file() else sorted(m.parent for m in p.rglob("metrics.json"))
        runs.update(dict.fromkeys(r.resolve() for r in found))
    return list(runs)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


def checkpoint_path(run_dir: Path, metrics: dict[str, Any]) -> Path | None:
    """The run's best checkpoint (metrics.json's path, else the run's checkpoints/ folder)."""
    best = metrics.get("best_model_path") or metrics.get("ckpt_path")
    if best and Path(best).is_file():
        return Path(best)
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    named = [c for c in ckpts if c.name != "last.ckpt"]
    return (named or ckpts or [None])[-1]


def count_params(ckpt: Path | None) -> int | None:
    if ckpt is None:
        return None
    from mmdigits.models.loading import load_checkpoint_model

    try:
        return sum(p.numel() for p in load_checkpoint_model(ckpt).parameters())
    except Exception as err:  # a report should survive one odd checkpoint
        log.warning("%s: cannot count parameters: %s", ckpt, err)
        return None


def _name(cfg: dict[str, Any], choices: dict[str, Any], group: str) -> str | None:
    if choices.get(group):
        return str(choices[group])
    target = cfg.get(f"model.{group}._target_")
    return str(target).rsplit(".", 1)[-1] if target else None


def load_run(run_dir: Path, root: Path | None = None) -> dict[str, Any]:
    """One report row: names, config, metrics and paths of a run directory."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = flatten(_yaml(run_dir / ".hydra" / "config.yaml") or {})
    choices = ((_yaml(run_dir / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}).get("runtime", {})
    choices = choices.get("choices") or {}
    overrides = _yaml(run_dir / ".hydra" / "overrides.yaml") or []
    ckpt = checkpoint_path(run_dir, metrics)
    try:
        name = str(run_dir.relative_to(root)) if root else run_dir.name
    except ValueError:
        name = run_dir.name
    row = {
        "run": name if name != "." else run_dir.name,
        "model": cfg.get("model_name"),
        "audio_encoder": _name(cfg, choices, "audio_encoder"),
        "image_encoder": _name(cfg, choices, "image_encoder"),
        "fusion": _name(cfg, choices, "fusion"),
        "task": cfg.get("data.task"),
        "seed": cfg.get("seed"),
        "params": count_params(ckpt),
        "epochs": metrics.get("epochs"),
        "wall_time_s": metrics.get("wall_time_s"),
    }
    row.update({k: v for k, v in metrics.items() if "/" in k})
    row.update({"dir": str(run_dir), "ckpt": str(ckpt) if ckpt else None, "overrides": " ".join(overrides)})
    row["config"] = cfg
    return row


def runs_frame(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All runs under ``paths`` as a DataFrame (columns :data:`COLUMNS` + every metric + dir/ckpt/config)."""
    root = Path(paths[0]).resolve() if paths else None
    rows = [load_run(r, root) for r in find_runs(paths)]
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    return df


def sort_runs(df: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame:
    if metric not in df:
        raise KeyError(f"metric {metric!r} not in the runs' metrics: {sorted(c for c in df if '/' in c)}")
    return df.sort_values(metric, ascending="loss" in metric, na_position="last").reset_index(drop=True)


# ----------------------------------------------------------------------------- seeds
def _signature(cfg: dict[str, Any]) -> dict[str, Any]:
    """Config without seeds and paths (what makes runs 'the same experiment')."""
    return {k: v for k, v in cfg.items() if k.split(".")[-1] != "seed" and not k.startswith("paths.")}


def seed_groups(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std (sample std) of :data:`SUMMARY_METRICS` over runs that differ only by seed (n >= 2)."""
    sigs = [_signature(c) if c else {"model": m, "fusion": f} for c, m, f in
            zip(df["config"], df["model"], df["fusion"])]  # fmt: skip
    keys = sorted({k for s in sigs for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in sigs}) > 1]
    labels = [", ".join(f"{k}={s.get(k)}" for k in varying) or "all runs" for s in sigs]
    rows = []
    for label in dict.fromkeys(labels):
        sub = df[[lab == label for lab in labels]]
        if len(sub) < 2:
            continue
        row: dict[str, Any] = {"group": label, "n": len(sub), "seeds": ",".join(map(str, sub["seed"]))}
        for m in SUMMARY_METRICS:
            vals = pd.to_numeric(sub.get(m), errors="coerce").dropna() if m in sub else pd.Series([])
            row[m] = f"{vals.mean():.4f} ± {vals.std(ddof=1):.4f}" if len(vals) >= 2 else None
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- markdown
def _fmt(v: Any, col: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.1f}" if col.endswith("_s") else f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, (int, np.integer)) and abs(int(v)) >= 10000:
        return f"{int(v):,}"
    return str(v).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of ``df`` (numbers right-aligned)."""
    cols = list(columns or df.columns)
    num = [pd.api.types.is_numeric_dtype(df[c]) for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if n else "---" for n in num) + "|"]
    for _, r in df[cols].iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], c) for c in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- TensorBoard curves
def read_scalars(run_dir: str | Path, tags: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``tag -> (steps, values)`` from the run's TensorBoard event files (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tensorboard"
    if not tb.is_dir():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0}).Reload()
    have = set(acc.Tags()["scalars"])
    out = {}
    for tag in tags:
        if tag in have:
            ev = acc.Scalars(tag)
            out[tag] = (np.array([e.step for e in ev]), np.array([e.value for e in ev]))
    return out


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
    dm = run_datamodule(run_dir, model.task)
    preds, targets = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            p = model.predict_proba(batch)
            preds.append((p > 0.5).long() if model.task == "match" else p.argmax(-1))
            targets.append(batch["target"].long())
    k = 2 if model.task == "match" else 10
    return sk_confusion(torch.cat(targets).numpy(), torch.cat(preds).numpy(), labels=list(range(k)))


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


# ----------------------------------------------------------------------------- report
def write_report(
    paths: Sequence[str | Path], metric: str = "test/acc", out_dir: str | Path | None = None
) -> Path:
    """Write report.md, curves.png and confusion.png into ``out_dir`` (default: the first path)."""
    out = Path(out_dir or paths[0])
    df = runs_frame(paths)
    if df.empty:
        raise FileNotFoundError(f"no runs (metrics.json) under {', '.join(map(str, paths))}")
    df = sort_runs(df, metric)
    cols = [c for c in COLUMNS if c != "seed" or df["seed"].nunique() > 1]
    if df.get("test/auroc") is None or df["test/auroc"].isna().all():
        cols.remove("test/auroc")
    if metric not in cols:
        cols.append(metric)
    groups = seed_groups(df)
    plot_curves(df, out / "curves.png")
    how = write_confusion(df.iloc[0], out / "confusion.png")
    text = [
        f"# Run report ({len(df)} runs, sorted by `{metric}`)",
        "",
        markdown_table(df, cols),
        "",
        "## Mean ± std over seeds",
        "",
        markdown_table(groups) if len(groups) else "No runs differ only by their seed.",
        "",
        "![validation curves](curves.png)",
        "",
        f"## Best run: {df.iloc[0]['run']}",
        "",
        f"Confusion matrix ({how}):",
        "",
        "![confusion matrix](confusion.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return out / "report.md"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdigits.report", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="run directories or multirun directories")
    p.add_argument("--metric", default="test/acc", help="sort by this metric (default test/acc)")
    p.add_argument("--out", default=None, help="output directory (default: the first PATH)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    try:
        path = write_report(a.paths, a.metric, a.out)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
