"""How sure a figure is: confidence intervals of test accuracy, paired tests between groups of runs.

Every run saves its test predictions (``test_predictions.npy``: index, target, decision, probability per
test pair), so two recipes are compared on the same pairs:

* over seeds: a t interval of the seeds' accuracies (scipy);
* over test pairs: a percentile bootstrap of the accuracy of the seeds' mean correctness per pair (scipy);
* per seed, recipe A against recipe B: McNemar's exact test on the pairs one gets right and the other wrong
  (statsmodels);
* combined over seeds: a paired permutation test (scipy) of the difference in mean correctness per pair,
  with Holm's correction (statsmodels) over the comparisons with the best group;
* where a difference is not significant: how many seeds a paired t test would need to find the observed
  per-seed difference at 80 % power (statsmodels).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from mmdigits.data.npy import load_npy
from mmdigits.utils.run import PREDICTIONS_FILE

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8


def read_predictions(run_dir: str | Path) -> np.ndarray | None:
    """A run's (pairs, 4) predictions (index, target, decision, probability), or None when it saved none."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    rows = load_npy(path)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError(f"{path}: expected a (pairs, 4) array of index, target, decision, probability")
    return rows


def pool(runs: dict[tuple[int | None, int], np.ndarray]) -> np.ndarray:
    """One correctness value per test pair: the mean over a fold's seeds, the folds' pairs one after another
    (runs are keyed by ``(fold, seed)``, fold None for the corpus split)."""
    folds = sorted({k[0] for k in runs}, key=lambda f: -1 if f is None else f)
    return np.concatenate([np.mean([runs[k] for k in runs if k[0] == f], axis=0) for f in folds])


def correctness(runs: Sequence[np.ndarray]) -> np.ndarray:
    """(runs, pairs) bool: which test pairs each run decided right. The runs must cover the same pairs with
    the same targets (the same test split), else a ValueError says which differs."""
    first = runs[0]
    for i, rows in enumerate(runs[1:], 1):
        if rows.shape != first.shape or not np.array_equal(rows[:, :2], first[:, :2]):
            raise ValueError(f"run {i} was tested on other pairs or targets than run 0: not comparable")
    return np.stack([rows[:, 2] == rows[:, 1] for rows in runs])


def seed_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and the t interval over seeds, cut to [0, 1] (nan bounds for fewer than two seeds)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2 or np.all(v == v[0]):
        return (mean, mean, mean) if len(v) >= 2 else (mean, math.nan, math.nan)
    lo, hi = stats.t.interval(confidence, len(v) - 1, loc=mean, scale=stats.sem(v))
    return mean, max(float(lo), 0.0), min(float(hi), 1.0)  # an accuracy stays in [0, 1]


def pair_interval(
    correct: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap over test pairs of the accuracy of the mean correctness per pair (``correct``:
    (seeds, pairs), or one value per pair from :func:`pool`)."""
    per_pair = np.atleast_2d(correct).mean(0)
    res = stats.bootstrap(
        (per_pair,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's exact test of two runs on the same pairs (bool correctness vectors)."""
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def paired_permutation_p(a: np.ndarray, b: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p of a paired permutation test (each pair's A and B swapped at random) on the difference of
    mean correctness per pair; ``a`` and ``b`` are (seeds, pairs), seeds matched."""
    x, y = np.atleast_2d(a).mean(0), np.atleast_2d(b).mean(0)
    keep = x != y  # pairs both get equally right add nothing to the statistic's spread
    if keep.sum() < 2:  # with one differing pair both signs are as extreme: p = 1
        return 1.0
    res = stats.permutation_test(
        (x[keep], y[keep]),
        lambda u, v, axis=-1: np.mean(u - v, axis=axis),
        permutation_type="samples",
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down correction of a family of p-values."""
    if not len(pvalues):
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(pvalues), alpha=ALPHA, method="holm")[1]]


def seeds_needed(differences: Sequence[float], alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds a paired t test over seeds needs to detect the mean of the observed per-seed differences at
    ``power``; None when the differences have no spread or no mean (nothing to estimate from), or when
    statsmodels can evaluate neither the solver nor the power at a few runs (NaN, for some large effects)."""
    from statsmodels.stats.power import TTestPower

    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0 or d.mean() == 0:
        return None
    effect = abs(d.mean()) / d.std(ddof=1)
    tester = TTestPower()
    with warnings.catch_warnings():  # its root finder warns where it fails (NaN), handled below
        warnings.simplefilter("ignore")
        n = tester.solve_power(effect_size=effect, alpha=alpha, power=power, alternative="two-sided")
    if math.isfinite(n) and n > 2:
        return int(math.ceil(n))
    # The solver failed or stopped at its lower bound, 2 (the fewest a paired t test can use): the answer is a
    # few runs, counted directly. A power statsmodels cannot evaluate (NaN, for some large effects at 2 or 3
    # runs) counts as not reached.
    for runs in range(2, 6):
        if tester.power(effect_size=effect, nobs=runs, alpha=alpha, alternative="two-sided") >= power:
            return runs
    return None


@dataclass
class Comparison:
    """One group against the best group on the same test pairs, runs matched by fold and seed."""

    group: str
    best: str
    runs: list[tuple[int | None, int]]  # the matched (fold, seed) keys
    difference: float  # mean accuracy of the group minus the best's, over the matched runs
    per_run_p: list[float]  # McNemar, per matched run
    p: float  # paired permutation test, runs combined
    p_holm: float = math.nan
    seeds_needed: int | None = None

    @property
    def distinguishable(self) -> bool:
        return self.p_holm < ALPHA


def compare_with_best(
    groups: dict[str, dict[tuple[int | None, int], np.ndarray]], best: str
) -> list[Comparison]:
    """Every group against ``best`` (``group -> (fold, seed) -> correctness``), on the runs both have; Holm's
    correction over the family of comparisons. Folds have their own test pairs: runs are paired within a
    fold, and the combined test pools the folds' pairs (:func:`pool`)."""
    out = []
    for name, runs in groups.items():
        if name == best:
            continue
        keys = sorted(set(runs) & set(groups[best]), key=lambda k: (-1 if k[0] is None else k[0], k[1]))
        if not keys:
            continue
        a, b = {k: runs[k] for k in keys}, {k: groups[best][k] for k in keys}
        diffs = np.array([a[k].mean() - b[k].mean() for k in keys])
        per_run = [mcnemar_p(a[k], b[k]) for k in keys]
        p = paired_permutation_p(pool(a), pool(b))
        out.append(
            Comparison(name, best, keys, float(diffs.mean()), per_run, p, seeds_needed=seeds_needed(diffs))
        )
    for c, p in zip(out, holm([c.p for c in out])):
        c.p_holm = p
    return out
