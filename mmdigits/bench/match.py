"""``python -m mmdigits.bench.peers --experiment match_from_experts``: a match recipe that starts from
experts, next to its experts composed without training and to the default run, per seed, on the same test
pairs.

For each seed s, two commands as a user runs them: ``python -m mmdigits.train experiment=<recipe> seed=s``
(it finds or trains the experts, trains the fusion, tests it and the experts composed: ``composition`` in
its metrics.json) and ``python -m mmdigits.train seed=s`` (the default run). Five rows per seed:

* experts composed, soft: P(match) = sum_k p_img(k) p_aud(k) >= 0.5;
* experts composed, calibrated soft: the same after each expert's temperature (fitted on its validation part);
* experts composed, hard: match when the two argmaxes agree;
* the fused model (the recipe);
* the default run;

and once per command, aeon's MiniRocket fit on the audio expert's training speakers (its train and
validation parts) and tested on its test utterances, as ``--experiment audio_only`` fits it: every row's wall
time is also given as a multiple of this fit time, measured in the same command on the same machine.

Times: a composed rule's is the experts' own runs (their metrics.json, whenever they trained) plus fitting
the temperatures and running both experts over the test pairs; the fused model's is the experts' runs plus
its own fusion run; the default run's is its run. Each is the time inside the command (``wall_time_s``), not
the process start. Rates are test pairs per second of the models' forward passes (``test/pairs_per_s``).
Overrides reach the recipe, and the default run where its config has the key (``experts.*`` does not).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from mmdigits.bench.common import compose
from mmdigits.bench.references import minirocket
from mmdigits.utils.run import ready_datamodule

RULES = {
    "soft": "experts composed, soft: sum_k p_img(k) p_aud(k) >= 0.5",
    "calibrated": "experts composed, calibrated soft (T_img={image:.3g}, T_aud={audio:.3g})",
    "hard": "experts composed, hard: the argmaxes agree",
}
QUIET = ["logger=csv", "overwrite=true", "~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false"]


def slug(words: Sequence[str]) -> str:
    return re.sub(r"[^\w.+-]+", "-", "_".join(words)).strip("-")[:150]  # a path Hydra can take as a value


def train_run(args: list[str], run: Path) -> dict[str, Any]:
    """``python -m mmdigits.train args... hydra.run.dir=run``: its metrics.json, plus the errors of its saved
    test predictions."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmdigits.train", *args, *QUIET, f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mmdigits.train failed ({run}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    rows = np.load(run / "test_predictions.npy")  # (pairs, 4): index, target, decision, probability
    metrics["errors"], metrics["n"] = int((rows[:, 1] != rows[:, 2]).sum()), len(rows)
    return metrics


def for_default(overrides: Sequence[str], default_cfg: Any) -> list[str]:
    """The overrides whose key the default run's config has (a recipe's own keys, experts.*, are left out)."""
    keep = []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if OmegaConf.select(default_cfg, key, default="<absent>") != "<absent>":
            keep.append(o)
    return keep


def rows_of_seed(recipe: dict[str, Any], default: dict[str, Any], label: str) -> list[tuple[str, ...]]:
    """The five rows of one seed: model, test acc, F1, errors / pairs, wall s, pairs/s, notes."""
    comp, experts = recipe.get("composition"), recipe.get("experts") or {}
    if not comp:
        raise RuntimeError(f"{label}: metrics.json has no composition (needs an image and an audio expert)")
    experts_s = sum(e["wall_time_s"] for e in experts.values())
    calibration_s = sum(e["calibration_s"] for e in experts.values())
    status = ", ".join(f"{m} {e['status']}" for m, e in experts.items())
    rows = []
    for rule, name in RULES.items():
        s = comp[rule]
        wall = experts_s + calibration_s + comp["inference_s"]
        rows.append((name.format(**comp["temperatures"]), f"{s['acc']:.4f}", f"{s['f1']:.4f}",
                     f"{s['errors']}/{s['n']}", f"{wall:.1f}", f"{comp['pairs_per_s']:,.0f}",
                     f"experts' runs ({status}) + composing"))  # fmt: skip
    fused_s = experts_s + recipe["fusion_wall_time_s"]
    for name, m, wall, note in (
        (f"fused: {label}", recipe, fused_s, "experts' runs + the fusion's run"),
        ("default: python -m mmdigits.train", default, default["wall_time_s"], "its run"),
    ):
        rate = m.get("test/pairs_per_s")
        rows.append((name, f"{m['test/acc']:.4f}", f"{m['test/f1']:.4f}", f"{m['errors']}/{m['n']}",
                     f"{wall:.1f}", f"{rate:,.0f}" if rate else "", note))  # fmt: skip
    return rows


def minirocket_on_audio_expert(recipe_cfg: Any) -> dict[str, Any]:
    """aeon's MiniRocket on the audio expert's data (``{"missing": hint}`` without aeon)."""
    from mmdigits.from_experts import expert_overrides

    return minirocket(ready_datamodule(compose(expert_overrides(recipe_cfg, "audio")).data, ("fit", "test")))


def compare_with_experts(args: argparse.Namespace, data: list[str]) -> int:
    """Every seed of ``args.seeds``: the recipe, its experts composed, and the default run; then the mean over
    seeds of each row."""
    recipe_cfg = compose([f"experiment={args.experiment}", *args.overrides, *data])
    data_dir = str(recipe_cfg.data.dir)
    default_overrides = for_default(args.overrides, compose([*data]))
    label = f"experiment={args.experiment}"
    out, rows, by_name, n = Path(args.out), [], {}, None
    for seed in args.seeds:
        common = [f"data.dir={data_dir}", f"seed={seed}"]
        recipe = train_run(
            [f"experiment={args.experiment}", *args.overrides, *common],
            out / f"{slug([args.experiment, *args.overrides])}_seed{seed}",
        )
        default_dir = out / f"{slug(['default', *default_overrides])}_seed{seed}"
        default = train_run([*default_overrides, *common], default_dir)
        seed_rows = rows_of_seed(recipe, default, label)
        rows += [(f"{r[0]}, seed {seed}", *r[1:]) for r in seed_rows]
        for r in seed_rows:
            by_name.setdefault(r[0].split(" (T_img")[0], []).append(float(r[1]))
        n = recipe["composition"]["soft"]["n"]
    if len(args.seeds) > 1:
        for name, accs in by_name.items():
            mean = f"{np.mean(accs):.4f} ± {np.std(accs, ddof=1):.4f}"
            rows.append((f"{name}: mean of {len(accs)} seeds", mean, "", "", "", "", ""))
    peer = minirocket_on_audio_expert(recipe_cfg)
    if "missing" in peer:
        rows.append(("aeon MiniRocket (random_state=0): not installed", "", "", "", "", "", peer["missing"]))
    else:
        rows.append(("aeon MiniRocket (random_state=0), audio digits only", f"{peer['acc']:.4f}", "",
                     f"{peer['errors']}/{peer['n']}", f"{peer['fit_s']:.1f}", "",
                     "its fit on the audio expert's training speakers, in this command"))  # fmt: skip
    fit_s = float(f"{peer['fit_s']:.1f}") if "fit_s" in peer else 0.0  # as printed: multiples of what shows
    threads = torch.get_num_threads()
    print(f"\nmatch, {n} test pairs of {data_dir}; torch {torch.__version__}, {threads} threads")
    if args.overrides:
        kept = " ".join(default_overrides) or "none"
        print(f"overrides: {' '.join(args.overrides)} (those the default run takes: {kept})")
    print("| model | test acc | F1 | errors / pairs | wall s | pairs/s | notes | wall s / MiniRocket's fit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        times = f"{float(r[4]) / fit_s:.1f}×" if fit_s and r[4] else ""
        print("| " + " | ".join([*r, times]) + " |")
    return 0
