"""The report across speaker folds: runs paired within a fold, every fold's figure, errors by speaker."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmdigits.analysis import records, stats
from mmdigits.analysis.speakers import speaker_errors, speaker_section
from mmdigits.data.build import build_dataset
from mmdigits.report import main as report_main
from mmdigits.utils.io import atomic_save_npy
from mmdigits.utils.run import PREDICTIONS_FILE
from mmdigits.utils.rundir import record_start
from tests.trained_runs import trained_run


def test_pool_averages_seeds_within_a_fold_and_keeps_each_folds_pairs():
    runs = {(0, 0): np.array([1, 0, 1.0]), (0, 1): np.array([1, 1, 1.0]), (1, 0): np.array([0, 1.0])}
    assert stats.pool(runs).tolist() == [1.0, 0.5, 1.0, 0.0, 1.0]


def test_folds_of_other_sizes_are_compared_fold_by_fold():
    rng = np.random.default_rng(3)
    best = {(0, 0): rng.random(300) > 0.02, (1, 0): rng.random(500) > 0.02}
    worse = {k: v.copy() for k, v in best.items()}
    worse[(0, 0)][:30], worse[(1, 0)][:40] = False, False
    (c,) = stats.compare_with_best({"best": best, "worse": worse}, "best")
    assert c.runs == [(0, 0), (1, 0)] and len(c.per_run_p) == 2
    assert c.distinguishable and c.difference < 0


def fake_run(root, name, data_dir, target, decision, seed=0):
    run = root / name
    run.mkdir(parents=True)
    index = np.arange(len(target))
    atomic_save_npy(run / PREDICTIONS_FILE, np.stack([index, target, decision, np.full(len(target), 0.9)], 1))
    record_start(run, "h", data={"dir": str(data_dir)})
    return str(run)


def test_speaker_table_counts_each_speakers_errors_and_names_the_one_that_dominates(tmp_path):
    data = tmp_path / "build"
    data.mkdir()
    spk = np.repeat([3, 7, 9], 20)  # 60 test pairs, 20 per speaker
    np.save(data / "speaker_spoken_test.npy", spk)
    target = np.tile(np.arange(10), 6)
    decision = target.copy()
    decision[20:32] = 0  # speaker 7: 12 errors (those whose target is not 0), mostly "→0"
    decision[0] = 5  # speaker 3: one error
    runs = [fake_run(tmp_path, f"r{s}", data, target, decision, seed=s) for s in (0, 1)]
    table = speaker_errors(runs, binary=False)
    wrong7 = int(np.sum(decision[20:40] != target[20:40]))
    assert table["speaker"].tolist() == [7, 3]
    assert table["errors"].tolist() == [2 * wrong7, 2] and table["pairs"].tolist() == [40, 40]
    assert "→0" in table.loc[0, "commonest errors"]
    df = pd.DataFrame({"group": ["g", "g"], "dir": runs, "task": ["audio_digit"] * 2})
    text = "\n".join(speaker_section(df, [{"group": "g"}]))
    assert f"Speaker 7 accounts for {2 * wrong7} of the group's {2 * wrong7 + 2} errors" in text


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory, tiny_raw_dir):
    base = tmp_path_factory.mktemp("fold_runs") / "sweep"
    builds = tmp_path_factory.mktemp("fold_builds")
    small = {"n_train": 300, "n_test": 150, "match_rate": 0.3}
    runs = []
    for fold in (0, 1):
        d = build_dataset(builds / f"fold{fold}", tiny_raw_dir, verify=False, download=False,
                          split="speaker_folds", folds=3, fold=fold, **small)  # fmt: skip
        over = ["task=audio_digit", "data.split=speaker_folds", "data.folds=3", f"data.fold={fold}",
                "data.build={n_train: 300, n_test: 150, match_rate: 0.3}"]  # fmt: skip
        runs.append(trained_run(base, f"fold{fold}", d, *over))
    return base, runs


def test_the_report_across_folds_gives_every_fold_and_the_speakers(fold_runs, tmp_path):
    base, runs = fold_runs
    record = tmp_path / "experiments" / "folds"
    record.mkdir(parents=True)
    assert report_main([str(base), "--record", str(record)]) == 0
    text = (record / "README.md").read_text()
    assert "Over runs (folds and seeds)" in text and "fold 0 seed 0" in text and "fold 1 seed 0" in text
    assert "## Errors by speaker" in text or all(r["metrics"]["test/acc"] == 1.0 for r in runs)
    (group,) = json.loads((record / records.SUMMARY_FILE).read_text())["groups"]
    assert group["folds"] == [0, 1] and group["n"] == 2
    accs = [r["metrics"]["test/acc"] for r in runs]
    assert group["mean"] == pytest.approx(np.mean(accs))
