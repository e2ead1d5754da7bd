"""Experiment records regenerated from runs: the statistics sections of a report and a record's generated part
(the index of every record: :mod:`mmdigits.analysis.index`).

A record is ``experiments/<name>/README.md``. Its text above the marker line is written by people (the
question, the recipe and how it was chosen, how often the test split was read); everything from the marker on
is written by ``python -m mmdigits.report <runs> --record experiments/<name>`` and replaced whole on the
next run. The report also writes ``summary.json`` beside it, which ``--index experiments`` collects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmdigits.analysis import stats
from mmdigits.analysis.runs import markdown_table
from mmdigits.utils.io import atomic_write_bytes, atomic_write_json

MARKER = "<!-- Everything below is written by python -m mmdigits.report; edit the text above it only. -->"
SUMMARY_FILE = "summary.json"
ENV_KEYS = (
    "commit",
    "python",
    "torch",
    "lightning",
    "torchmetrics",
    "numpy",
    "hydra-core",
    "cpu",
    "cpu_count",
    "gpu",
    "torch_threads",
)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def format_ci(lo: float, hi: float) -> str:
    return "–" if math.isnan(lo) else f"[{lo:.4f}, {hi:.4f}]"


def format_time(g: dict[str, Any]) -> str:
    return "–" if not g["wall_s"] else f"{g['wall_s'][0]:.0f}–{g['wall_s'][1]:.0f} s"


def format_rate(g: dict[str, Any]) -> str:
    return "–" if g["pairs_per_s"] is None else f"{g['pairs_per_s']:,.0f}"


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


Key = tuple[int | None, int]  # (fold, seed): fold None for the corpus's own split


def run_key(row: pd.Series) -> Key:
    fold = row.get("fold")
    fold = None if fold is None or (isinstance(fold, float) and math.isnan(fold)) else int(fold)
    return fold, int(row["seed"]) if row["seed"] is not None else 0


def key_name(key: Key) -> str:
    return f"seed {key[1]}" if key[0] is None else f"fold {key[0]} seed {key[1]}"


def group_predictions(df: pd.DataFrame) -> dict[str, dict[Key, np.ndarray]]:
    """``group -> (fold, seed) -> correctness per test pair`` for the runs that saved predictions; runs of one
    fold must have been tested on the same pairs."""
    rows: dict[tuple[str, Key], np.ndarray] = {}
    for _, r in df.iterrows():
        pred = stats.read_predictions(r["dir"])
        if pred is not None:
            rows[(r["group"], run_key(r))] = pred
    out: dict[str, dict[Key, np.ndarray]] = {}
    for fold in {key[0] for _, key in rows}:
        keys = [k for k in rows if k[1][0] == fold]
        for (group, key), c in zip(keys, stats.correctness([rows[k] for k in keys])):
            out.setdefault(group, {})[key] = c
    return out


def group_statistics(df: pd.DataFrame, predictions: dict[str, dict[Key, np.ndarray]]) -> list[dict[str, Any]]:
    """Per group, best mean test accuracy first: its runs (seeds, or folds), mean, t interval over the runs,
    bootstrap interval over test pairs, time per run and inference rate."""
    out = []
    for group, sub in df.groupby("group", sort=False):
        sub = sub[pd.to_numeric(sub["test/acc"], errors="coerce").notna()]
        if not len(sub):
            continue
        acc = [float(a) for a in sub["test/acc"]]
        mean, lo, hi = stats.seed_interval(acc)
        pairs = predictions.get(group)
        plo, phi = stats.pair_interval(stats.pool(pairs)) if pairs else (math.nan, math.nan)
        wall = pd.to_numeric(sub["wall_time_s"], errors="coerce").dropna()
        rate = pd.to_numeric(sub.get("test/pairs_per_s", pd.Series(dtype=float)), errors="coerce").dropna()
        keys = [run_key(r) for _, r in sub.iterrows()]
        out.append(
            {
                "group": group,
                "n": len(acc),
                "seeds": sorted({k[1] for k in keys}),
                "folds": sorted({k[0] for k in keys if k[0] is not None}),
                "runs": {key_name(k): a for k, a in sorted(zip(keys, acc), key=lambda x: str(x[0]))},
                "mean": mean,
                "ci_seeds": [lo, hi],
                "ci_pairs": [plo, phi],
                "wall_s": [float(wall.min()), float(wall.max())] if len(wall) else None,
                "pairs_per_s": float(rate.median()) if len(rate) else None,
                "stopped_by": sorted({str(s) for s in sub["stopped_by"] if s}),
            }
        )
    return sorted(out, key=lambda g: -g["mean"])


def statistics_section(groups: list[dict[str, Any]]) -> list[str]:
    folds = any(g["folds"] for g in groups)
    rows = [
        {
            "group": g["group"],
            "runs": g["n"],
            "mean test acc": f"{g['mean']:.4f}",
            "95 % CI over runs (t)": format_ci(*g["ci_seeds"]),
            "95 % CI over test pairs (bootstrap)": format_ci(*g["ci_pairs"]),
            "time per run": format_time(g),
            "inference pairs/s (median)": format_rate(g),
        }
        for g in groups
    ]
    per_run = [{"group": g["group"], **{k: f"{v:.4f}" for k, v in g["runs"].items()}} for g in groups]
    return [
        "## Test accuracy with 95 % confidence intervals",
        "",
        " ".join(
            [
                f"Over runs ({'folds and seeds' if folds else 'seeds'}): a t interval of the runs'",
                "accuracies. Over test pairs: a percentile bootstrap (2,000 resamples of the test pairs) of",
                "the accuracy of the mean correctness per pair",
                "(each fold's pairs once, the mean over its seeds)." if folds else "(the mean over seeds).",
            ]
        ),
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
        f"Every {'fold' if folds else 'seed'}:",
        "",
        markdown_table(pd.DataFrame(per_run).fillna("–")),
        "",
    ]


def significance_section(
    groups: list[dict[str, Any]], predictions: dict[str, dict[Key, np.ndarray]]
) -> list[str]:
    have = [g["group"] for g in groups if g["group"] in predictions]
    if len(have) < 2:
        return []
    best = have[0]
    comparisons = stats.compare_with_best({g: predictions[g] for g in have}, best)
    if not comparisons:  # no other group was tested on the best group's pairs (e.g. other folds)
        return []
    rows = [
        {
            "group": c.group,
            "runs": len(c.runs),
            "difference": f"{c.difference:+.4f}",
            "McNemar p per run": " / ".join(_p(p) for p in c.per_run_p),
            "paired p (runs combined)": _p(c.p),
            "Holm-corrected p": _p(c.p_holm),
            "verdict": "worse than the best" if c.distinguishable else "indistinguishable from the best",
            "runs needed (80 % power)": "–"
            if c.distinguishable or c.seeds_needed is None
            else str(c.seeds_needed),
        }
        for c in comparisons
    ]
    same = [best] + [c.group for c in comparisons if not c.distinguishable]
    return [
        "## Paired tests against the best group",
        "",
        f"Best mean test accuracy: `{best}`. Each group is compared with it on the same test pairs, run",
        "with run (same seed, same fold): McNemar's exact test per run, and a paired permutation test (9,999",
        "resamples) of the difference in mean correctness per pair with the runs combined, Holm-corrected",
        f"over the comparisons below (α = {stats.ALPHA}). Where a difference is not significant, the last",
        "column estimates how many runs a paired t test over runs would need to find the observed per-run",
        "difference at 80 % power.",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
        "Statistically indistinguishable from the best (including it): "
        + ", ".join(f"`{g}`" for g in same)
        + ".",
        "",
    ]


def composition_section(df: pd.DataFrame) -> list[str]:
    """Runs that tested their experts composed (``metrics.json``'s ``composition``): each rule per seed beside
    the run's own test accuracy, and the mean."""
    rows = []
    for _, r in df.iterrows():
        comp = r.get("composition")
        if isinstance(comp, dict):
            rules = {k: v["acc"] for k, v in comp.items() if isinstance(v, dict) and "acc" in v}
            rows.append({"group": r["group"], "seed": r["seed"], "fused model": _num(r["test/acc"]), **rules})
    if not rows:
        return []
    table = pd.DataFrame(rows).sort_values(["group", "seed"])
    means = table.drop(columns="seed").groupby("group", sort=False).mean().reset_index().assign(seed="mean")
    shown = pd.concat([table, means]).map(lambda v: f"{v:.4f}" if isinstance(v, float) else v)
    return ["## The experts composed, on the same test pairs", "",
            "Test accuracy of the fused model and of its two experts composed without training: soft",
            "(P(match) = Σ_k p_img(k) p_aud(k) at 0.5), calibrated (the same after each expert's",
            "temperature, fitted on its validation part) and hard (the two argmaxes agree).", "",
            markdown_table(shown), "", *expert_calibration(df)]  # fmt: skip


def expert_calibration(df: pd.DataFrame) -> list[str]:
    """Each expert on its own validation part, per run: accuracy, its temperature, and the expected
    calibration error and NLL before and after it (experts recorded before these were kept: no row)."""
    rows = []
    for _, r in df.iterrows():
        experts = r.get("experts")
        for m, e in sorted(experts.items()) if isinstance(experts, dict) else []:
            val = e.get("validation") if isinstance(e, dict) else None
            if isinstance(val, dict):
                rows.append({"group": r["group"], "seed": r["seed"], "expert": m, "val acc": _num(val["acc"]),
                             "temperature": f"{e['temperature']:.3g}", "ECE": _num(val["ece"]),
                             "ECE after T": _num(val["ece_scaled"]), "NLL": _num(val["nll"]),
                             "NLL after T": _num(val["nll_scaled"])})  # fmt: skip
    if not rows:
        return []
    return ["Each expert on its own validation part: accuracy, its temperature T, and the expected",
            "calibration error (15 bins) and negative log-likelihood before and after T.", "",
            markdown_table(pd.DataFrame(rows).sort_values(["group", "seed", "expert"])), ""]  # fmt: skip


def environments(df: pd.DataFrame) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for env in df.get("environment", []):
        env = {k: (env or {}).get(k) for k in ENV_KEYS}
        if env not in seen:
            seen.append(env)
    return seen


def environment_section(df: pd.DataFrame) -> list[str]:
    envs = environments(df)
    if not any(any(e.values()) for e in envs):
        return ["## Where it ran", "", "The runs did not record their machine and versions.", ""]
    table = pd.DataFrame([{k: ("–" if v is None else v) for k, v in e.items()} for e in envs])
    return [
        "## Where it ran",
        "",
        "Machine, commit and library versions, as each run recorded them in its",
        "`metrics.json` (one row per distinct set):",
        "",
        markdown_table(table),
        "",
    ]


def summary(
    name: str, groups: list[dict[str, Any]], df: pd.DataFrame, metric: str = "test/acc"
) -> dict[str, Any]:
    return {
        "name": name,
        "command": f"bash experiments/reproduce.sh {name}",
        "groups": groups,
        "runs": len(df),
        "metric": metric,
        "environments": environments(df),
    }


def write_record(record_dir: Path, generated: Sequence[str], summary_data: dict[str, Any]) -> Path:
    """Replace the generated part of ``record_dir/README.md`` (kept: the text above the marker)."""
    readme = record_dir / "README.md"
    head = readme.read_text().split(MARKER)[0].rstrip() if readme.is_file() else f"# {record_dir.name}"
    atomic_write_bytes(readme, "\n".join([head, "", MARKER, "", *generated]).rstrip().encode() + b"\n")
    atomic_write_json(record_dir / SUMMARY_FILE, summary_data)
    return readme
