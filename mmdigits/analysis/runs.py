"""Read finished runs (Hydra run directories holding ``metrics.json``) into one table, and group seeds."""

from __future__ import annotations

import json
import logging
import math
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
        "model": metrics.get("run_name") or cfg.get("model_name"),  # model_name: runs before run_name
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
