"""Read finished runs (Hydra run directories holding ``metrics.json``) into one table, and group seeds.

A group is the runs whose configs differ only by their seed. It is named by the choices that set it apart
from the other groups, as the user typed them (``fusion=concat audio_encoder=crnn``): Hydra's config-group
choices and the command-line overrides, keeping only those that tell groups apart.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmdigits.errors import MMDigitsError, first_line
from mmdigits.utils.plain import load_yaml_data

log = logging.getLogger("mmdigits.report")

COLUMNS = ["run", "model", "audio_encoder", "image_encoder", "fusion", "task", "seed", "fold", "params",
           "epochs", "stopped_by", "wall_time_s", "val/acc_best", "test/acc", "test/f1",
           "test/auroc"]  # fmt: skip
# per group: mean ± std over seeds
SUMMARY_METRICS = ["test/acc", "test/f1", "test/auroc", "val/acc_best", "params", "train/pairs_per_s",
                   "test/pairs_per_s", "test/acc_image_missing", "test/acc_audio_missing"]  # fmt: skip
# the order in which choices name a group (a recipe first); any other differing choice or override follows
NAMING = ("experiment", "fusion", "audio_encoder", "image_encoder", "task", "model", "module", "data")
SHOWN_AS_IS = ("environment", "composition", "experts")  # metrics.json entries the records show whole
NOT_NAMES = ("seed", "hydra", "paths", "data.dir", "data.raw_dir", "data.fold", "ckpt_path", "overwrite")


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


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's ``metrics.json``: a JSON object, else MMDigitsError naming the file."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MMDigitsError(f"{path}: not a readable metrics file: {first_line(err)}") from err
    if not isinstance(metrics, dict):
        raise MMDigitsError(
            f"{path}: expected a JSON object of a run's metrics, found {type(metrics).__name__}"
        )
    return metrics


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _yaml(path: Path) -> Any:
    """A run's Hydra file as plain data (never resolved or built); None when absent or not plain data."""
    if not path.is_file():
        return None
    try:
        return load_yaml_data(path)
    except ValueError as err:
        log.warning("%s", err)
        return None


def checkpoint_path(run_dir: Path, metrics: dict[str, Any]) -> Path | None:
    """The run's best checkpoint: metrics.json's file in this run's checkpoints/ folder (the run may have been
    moved or copied since), else metrics.json's path, else the folder's last epoch checkpoint."""
    best = metrics.get("best_model_path") or metrics.get("ckpt_path")
    if not isinstance(best, str):  # an ensemble's evaluation (ckpt_path=[a,b]), or not a path at all
        best = None
    if best and (run_dir / "checkpoints" / Path(best).name).is_file():
        return run_dir / "checkpoints" / Path(best).name
    if best and Path(best).is_file():
        return Path(best)
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    named = [c for c in ckpts if c.name != "last.ckpt"]
    return (named or ckpts or [None])[-1]


def ensemble_members(metrics: dict[str, Any]) -> list[str] | None:
    """An ensemble evaluation's checkpoints (``metrics.json``'s ``ckpt_path``: a list of paths), else None."""
    ckpts = metrics.get("ckpt_path")
    ok = isinstance(ckpts, list) and ckpts and all(isinstance(c, str) for c in ckpts)
    return ckpts if ok else None


def ensemble_wall_time(own: Any, members: list[str]) -> float | None:
    """What an ensemble cost: its members' runs (their ``metrics.json``) and its own evaluation."""
    times = [own]
    for ckpt in members:
        try:
            times.append(read_metrics(Path(ckpt).parent.parent).get("wall_time_s"))
        except MMDigitsError:  # a member moved or unreadable: the cost is not known
            times.append(None)
    ok = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)
    return float(sum(times)) if ok else None


def count_params(ckpt: Path | None, members: list[str] | None = None) -> int | None:
    """The checkpoint's parameters; an ensemble's (``members``: its checkpoints) are its members' together."""
    if members:
        counts = [count_params(Path(m)) for m in members]
        return None if None in counts else sum(c for c in counts if c is not None)
    if ckpt is None:
        return None
    from mmdigits.models.loading import load_checkpoint_model

    try:
        return sum(p.numel() for p in load_checkpoint_model(ckpt).parameters())
    except Exception as err:  # a report should survive one odd checkpoint
        log.warning("%s: cannot count parameters: %s", ckpt, err)
        return None


def descriptors(choices: dict[str, Any], overrides: Sequence[str]) -> dict[str, str]:
    """What the user chose: config-group choices and ``key=value`` overrides (seeds and paths left out)."""
    out = {k: str(v) for k, v in choices.items() if v is not None and not k.startswith("hydra")}
    for item in overrides:
        key, _, value = str(item).lstrip("+~").partition("=")
        out.setdefault(key, value)
    return {k: v for k, v in out.items() if not k.startswith(NOT_NAMES)}


def _name(cfg: dict[str, Any], choices: dict[str, Any], group: str) -> str | None:
    if choices.get(group):
        return str(choices[group])
    target = cfg.get(f"model.{group}._target_")
    return str(target).rsplit(".", 1)[-1] if target else None


def load_run(run_dir: Path, root: Path | None = None, members: bool = True) -> dict[str, Any]:
    """One report row: names, config, metrics and paths of a run directory (an ensemble's evaluation is named
    after its first member's run, read without following members further)."""
    metrics = read_metrics(run_dir)
    cfg = flatten(_yaml(run_dir / ".hydra" / "config.yaml") or {})
    choices = ((_yaml(run_dir / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}).get("runtime", {})
    choices = choices.get("choices") or {}
    overrides = _yaml(run_dir / ".hydra" / "overrides.yaml") or []
    ckpt, ckpts = checkpoint_path(run_dir, metrics), ensemble_members(metrics)
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
        "fold": cfg.get("data.fold") if cfg.get("data.split") == "speaker_folds" else None,
        "params": count_params(ckpt, ckpts),
        "epochs": metrics.get("epochs"),
        "stopped_by": metrics.get("stopped_by"),
        "wall_time_s": metrics.get("wall_time_s"),
    }
    row.update({k: v for k, v in metrics.items() if "/" in k})
    row.update({k: metrics.get(k) for k in SHOWN_AS_IS})
    row.update({"dir": str(run_dir), "ckpt": str(ckpt) if ckpt else None, "overrides": " ".join(overrides)})
    row["config"], row["choices"] = cfg, descriptors(choices, overrides)
    if ckpts:  # an ensemble's evaluation
        row["choices"] = {"ensemble": f"{len(ckpts)} runs"}
        first = Path(ckpts[0]).parent.parent
        base = None
        if members and (first / "metrics.json").is_file():
            try:
                base = load_run(first, root, members=False)
            except MMDigitsError as err:  # named as an ensemble only
                log.warning("%s", err)
        if base is not None:
            named = ("model", "audio_encoder", "image_encoder", "fusion", "task", "fold", "seed")
            row.update({k: base[k] for k in named})
            row["config"] = {**base["config"], "ensemble": len(ckpts)}
            row["wall_time_s"] = ensemble_wall_time(row["wall_time_s"], ckpts)
            row["choices"] = {**base["choices"], **row["choices"]}
    return row


def runs_frame(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All runs under ``paths`` as a DataFrame (columns :data:`COLUMNS` + every metric + dir/ckpt/config),
    with ``group`` naming the runs that differ only by seed."""
    root = Path(paths[0]).resolve() if paths else None
    rows = [load_run(r, root) for r in find_runs(paths)]
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    if len(df):
        df["group"] = group_labels(df)
    return df


def sort_runs(df: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame:
    if metric not in df:
        raise KeyError(f"metric {metric!r} not in the runs' metrics: {sorted(c for c in df if '/' in c)}")
    return df.sort_values(metric, ascending="loss" in metric, na_position="last").reset_index(drop=True)


# ----------------------------------------------------------------------------- seeds
def _signature(cfg: dict[str, Any]) -> str:
    """Config without seeds, paths and the fold (what makes runs 'the same experiment')."""
    skip = ("paths.", "data.dir", "data.fold", "ckpt_path")
    kept = {k: v for k, v in cfg.items() if k.split(".")[-1] != "seed" and not k.startswith(skip)}
    return json.dumps(kept, sort_keys=True, default=str)


def group_labels(df: pd.DataFrame) -> list[str]:
    """A label per run: equal for runs that differ only by seed, made of the choices that tell groups apart
    (in :data:`NAMING` order; a choice that splits no group further is left out)."""
    sigs = [_signature(c) if c else f"{m}|{f}" for c, m, f in zip(df["config"], df["model"], df["fusion"])]
    descs = list(df["choices"]) if "choices" in df else [{} for _ in sigs]
    keys = sorted({k for d in descs for k in d}, key=lambda k: (NAMING.index(k) if k in NAMING else 99, k))
    chosen: list[str] = []
    classes = 1
    for k in keys:
        n = len({tuple(d.get(c) for c in [*chosen, k]) for d in descs})
        if n > classes:
            chosen, classes = [*chosen, k], n
    labels = [" ".join(f"{k}={d.get(k) or 'none'}" for k in chosen) or "all runs" for d in descs]
    seen: dict[str, set[str]] = {}
    for label, sig in zip(labels, sigs):
        seen.setdefault(label, set()).add(sig)
    order = {label: sorted(s) for label, s in seen.items()}  # same label, other config: number them
    return [label if len(order[label]) == 1 else f"{label} #{order[label].index(sig) + 1}"
            for label, sig in zip(labels, sigs)]  # fmt: skip


def _mean_std(values: pd.Series, col: str) -> str | None:
    vals = pd.to_numeric(values, errors="coerce").dropna()
    if not len(vals):
        return None
    if col == "params":
        return f"{int(vals.mean()):,}"
    digits = 0 if col.endswith("pairs_per_s") else 4
    std = f" ± {vals.std(ddof=1):.{digits}f}" if len(vals) >= 2 else ""
    return f"{vals.mean():,.{digits}f}{std}"


def seed_groups(df: pd.DataFrame, min_runs: int = 2, metric: str | None = None) -> pd.DataFrame:
    """Per group (runs that differ only by seed, at least ``min_runs``): mean ± std (sample std) over seeds of
    ``metric`` and :data:`SUMMARY_METRICS`, sorted by the mean of ``metric`` (default: test accuracy, else
    best validation accuracy)."""
    if "group" not in df:
        df = df.assign(group=group_labels(df)) if len(df) else df.assign(group=[])
    rows = []
    for label, sub in df.groupby("group", sort=False):
        if len(sub) < min_runs:
            continue
        seeds = ",".join(map(str, sorted(sub["seed"], key=lambda x: (x is None, x))))
        row: dict[str, Any] = {"group": label, "n": len(sub), "seeds": seeds}
        shown = SUMMARY_METRICS if metric in (None, *SUMMARY_METRICS) else [metric, *SUMMARY_METRICS]
        row.update({m: _mean_std(sub[m], m) if m in sub else None for m in shown})
        tested = "test/acc" in sub and sub["test/acc"].notna().any()
        key = metric or ("test/acc" if tested else "val/acc_best")
        row["_sort"] = pd.to_numeric(sub[key], errors="coerce").mean() if key in sub else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out = out.sort_values("_sort", ascending=False, na_position="last").drop(columns="_sort")
    return out[[c for c in out if c in ("group", "n", "seeds") or out[c].notna().any()]].reset_index(
        drop=True
    )


# ----------------------------------------------------------------------------- markdown
COUNTS = ("seed", "fold", "epochs", "global_step")


def _fmt(v: Any, col: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        if col in COUNTS and float(v).is_integer():  # a count column with gaps is stored as floats
            return str(int(v))
        if col.endswith("pairs_per_s"):
            return f"{v:,.0f}"
        return f"{v:.1f}" if col.endswith("_s") else f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)) and abs(int(v)) >= 10000:
        return f"{int(v):,}"
    return str(v).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of ``df`` (numbers right-aligned)."""
    cols = list(columns or df.columns)
    numeric = re.compile(r"^[\d,.± –-]+$")
    num = (
        [pd.api.types.is_numeric_dtype(df[c]) or bool(numeric.match(str(df[c].iloc[0]))) for c in cols]
        if len(df)
        else []
    )
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
