"""Experiment records: confidence intervals, paired tests, and records regenerated from runs by the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmdigits.analysis import index, records, stats
from mmdigits.analysis.runs import runs_frame
from mmdigits.report import main as report_main
from tests.trained_runs import trained_run


def test_seed_interval_holds_the_mean_and_narrows_with_more_seeds():
    mean, lo, hi = stats.seed_interval([0.990, 0.994, 0.992])
    assert lo < mean < hi and mean == pytest.approx(0.992)
    _, lo6, hi6 = stats.seed_interval([0.990, 0.994, 0.992] * 2)
    assert hi6 - lo6 < hi - lo
    assert np.isnan(stats.seed_interval([0.99])[1])  # one seed: no interval
    assert stats.seed_interval([0.97, 0.999, 1.0])[2] == 1.0  # an accuracy's interval stays below 1


def test_pair_interval_covers_the_accuracy_and_shrinks_with_more_pairs():
    rng = np.random.default_rng(0)
    small, large = rng.random((2, 500)) > 0.05, rng.random((2, 20000)) > 0.05
    lo, hi = stats.pair_interval(small)
    assert lo <= small.mean() <= hi
    lo2, hi2 = stats.pair_interval(large)
    assert hi2 - lo2 < (hi - lo) / 3


def test_paired_tests_tell_a_real_difference_from_none():
    rng = np.random.default_rng(1)
    a = rng.random((3, 5000)) > 0.01
    assert stats.mcnemar_p(a[0], a[0]) == 1.0
    assert stats.paired_permutation_p(a, a) == 1.0
    b = a.copy()
    b[:, :60] = False  # b gets 60 more pairs wrong in every seed
    b[:, 60:63] = True
    assert stats.mcnemar_p(a[0], b[0]) < 1e-6
    assert stats.paired_permutation_p(a, b) < 1e-3
    one = a.copy()
    one[:, 0] = ~one[:, 0]  # one pair apart: no evidence
    assert stats.paired_permutation_p(a, one) > 0.5


def test_holm_corrects_upward_and_keeps_order():
    raw = [0.01, 0.04, 0.03, 0.5]
    adj = stats.holm(raw)
    assert all(x >= r for x, r in zip(adj, raw))
    assert adj[0] == pytest.approx(0.04) and adj[3] == pytest.approx(0.5)  # 4 × 0.01; the largest kept
    assert stats.holm([]) == []


def test_seeds_needed_grows_as_the_difference_shrinks_against_its_spread():
    big = stats.seeds_needed([0.002, 0.0025, 0.0015])
    small = stats.seeds_needed([0.0005, 0.0015, -0.0005])
    assert big is not None and small is not None and big < small
    assert stats.seeds_needed([0.001, 0.001]) is None  # no spread: nothing to estimate from


def test_a_difference_far_larger_than_its_spread_needs_the_fewest_seeds():
    """statsmodels' solver finds no root below 2 observations (it returns NaN there): a paired t test needs
    2 seeds at least, and they suffice for a difference a hundred times its spread."""
    assert stats.seeds_needed([0.0100, 0.0101, 0.0102]) == 2


def test_seeds_needed_is_checked_against_the_power_where_the_solver_stops_short():
    """For a difference six times its spread statsmodels' solver answers about 2 runs, where 2 reach a power
    of about 0.49 and 3 reach 0.995: the answer is the fewest runs whose power reaches 80 %."""
    assert stats.seeds_needed([0.006, 0.005, 0.007]) == 3


def test_runs_tested_on_other_pairs_are_not_compared():
    a = np.array([[0, 1, 1, 0.9], [1, 0, 0, 0.2]])
    b = a.copy()
    b[1, 1] = 1  # another target for pair 1
    with pytest.raises(ValueError, match="not comparable"):
        stats.correctness([a, b])


def test_compare_with_best_marks_the_worse_group_and_not_the_equal_one():
    rng = np.random.default_rng(2)
    best = {(None, s): rng.random(4000) > 0.003 for s in range(3)}
    same = {s: v.copy() for s, v in best.items()}
    for v in same.values():  # other errors, as many: one pair right that best got wrong, and the reverse
        v[np.flatnonzero(v)[0]], v[np.flatnonzero(~v)[0]] = False, True
    worse = {s: v.copy() for s, v in best.items()}
    for v in worse.values():
        v[:80] = False
    out = {c.group: c for c in stats.compare_with_best({"best": best, "same": same, "worse": worse}, "best")}
    assert out["worse"].distinguishable and out["worse"].difference < 0
    assert not out["same"].distinguishable
    assert out["worse"].p_holm >= out["worse"].p


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory, tiny_dataset_dir):
    base = tmp_path_factory.mktemp("records") / "sweep"
    for fusion in ("agreement", "late"):
        for seed in (0, 1):
            trained_run(base, f"{fusion}_seed{seed}", tiny_dataset_dir, f"seed={seed}", f"fusion={fusion}")
    return base


def test_record_is_regenerated_below_its_marker_and_indexed(two_groups, tmp_path):
    record = tmp_path / "experiments" / "tiny"
    record.mkdir(parents=True)
    (record / "README.md").write_text("# tiny\n\nThe question, written by people.\n")
    assert report_main([str(two_groups), "--record", str(record)]) == 0
    text = (record / "README.md").read_text()
    assert text.startswith("# tiny\n\nThe question, written by people.\n")
    generated = text.split(records.MARKER)[1]
    for heading in ("95 % confidence intervals", "Paired tests against the best group", "Where it ran"):
        assert heading in generated
    assert "fusion=late" in generated and "fusion=agreement" in generated
    summary = json.loads((record / records.SUMMARY_FILE).read_text())
    assert sorted(g["group"] for g in summary["groups"]) == ["fusion=agreement", "fusion=late"]
    assert all(len(g["seeds"]) == 2 and 0 <= g["mean"] <= 1 for g in summary["groups"])
    # a second run replaces the generated part instead of appending to it
    assert report_main([str(two_groups), "--record", str(record)]) == 0
    assert (record / "README.md").read_text().count(records.MARKER) == 1
    readme = record.parent.parent / "README.md"
    readme.write_text(f"# project\n\n{index.README_BEGIN}\nstale\n{index.README_END}\n\nmore text\n")
    assert report_main(["--index", str(record.parent)]) == 0
    written = (record.parent / "README.md").read_text()
    assert "[tiny](tiny/README.md)" in written and "fusion=late" in written
    best = max(summary["groups"], key=lambda g: g["mean"])
    text = readme.read_text()
    assert "stale" not in text and text.endswith("more text\n")
    for g in summary["groups"]:  # two groups: each has its row
        assert f"| {g['group']} | {g['mean']:.4f} |" in text
    assert "(experiments/tiny/README.md)" in text and best["mean"] >= min(
        g["mean"] for g in summary["groups"]
    )


def test_report_without_predictions_still_reports(two_groups, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(two_groups, copy)
    for f in copy.rglob("test_predictions.npy"):
        f.unlink()
    assert report_main([str(copy)]) == 0
    text = (copy / "report.md").read_text()
    assert "95 % confidence intervals" in text and "Paired tests" not in text


def test_composition_rows_sit_beside_the_fused_model_per_seed_and_in_the_mean(tmp_path):

    dirs = []
    for seed, (fused, soft, hard) in enumerate([(0.9972, 0.9969, 0.9983), (0.9982, 0.9967, 0.9979)]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        comp = {"soft": {"acc": soft}, "hard": {"acc": hard}, "temperatures": {"audio": 0.2}}
        (d / "metrics.json").write_text(json.dumps({"test/acc": fused, "composition": comp}))
        dirs.append(str(d))
    df = runs_frame(dirs).assign(group="g", seed=[0, 1])  # the report's reading of the runs
    text = "\n".join(records.composition_section(df))
    assert "| g | 0 | 0.9972 | 0.9969 | 0.9983 |" in text
    assert "| g | mean | 0.9977 | 0.9968 | 0.9981 |" in text
    assert "temperatures" not in text


def test_each_experts_calibration_is_shown_per_seed_beside_its_accuracy(tmp_path):
    val = {"acc": 0.9986, "ece": 0.0934, "ece_scaled": 0.0027, "nll": 0.1081, "nll_scaled": 0.0052}
    experts = {"audio": {"temperature": 0.175, "validation": val}, "image": {"temperature": 0.466}}
    d = tmp_path / "s0"
    d.mkdir()
    comp = {"soft": {"acc": 0.99}}
    (d / "metrics.json").write_text(json.dumps({"test/acc": 0.99, "composition": comp, "experts": experts}))
    df = runs_frame([str(d)]).assign(group="g", seed=[0])
    text = "\n".join(records.composition_section(df))
    assert "| g | 0 | audio | 0.9986 | 0.175 | 0.0934 | 0.0027 | 0.1081 | 0.0052 |" in text
    assert "| g | 0 | image |" not in text  # an expert recorded before its calibration was: no row


def test_a_record_that_compares_its_recipe_with_others_is_indexed_by_its_own_runs(tmp_path):
    exp = tmp_path / "experiments" / "mine"
    exp.mkdir(parents=True)
    group = {"seeds": [0, 1], "n": 2, "ci_seeds": [0.9, 1.0], "ci_pairs": [0.9, 1.0], "wall_s": None,
             "pairs_per_s": None}  # fmt: skip
    summary = {"name": "mine", "command": "c", "environments": [],
               "groups": [{**group, "group": "experiment=other", "mean": 0.99},
                          {**group, "group": "experiment=mine", "mean": 0.98}]}  # fmt: skip
    (exp / records.SUMMARY_FILE).write_text(json.dumps(summary))
    table = index.headline_table(exp.parent)
    assert "0.9800" in table and "0.9900" not in table


def test_a_validation_only_record_is_indexed_without_a_test_figure(tmp_path):
    """A record whose runs never read the test split (no group has a test accuracy) still has its row."""
    exp = tmp_path / "experiments" / "study"
    exp.mkdir(parents=True)
    env = {"cpu": "Some CPU", "cpu_count": 2}
    summary = {"name": "study", "command": "bash experiments/reproduce.sh study", "environments": [env],
               "groups": [], "runs": 24, "metric": "val/acc"}  # fmt: skip
    (exp / records.SUMMARY_FILE).write_text(json.dumps(summary))
    written = index.write_index(exp.parent).read_text()
    row = next(line for line in written.splitlines() if "[study](study/README.md)" in line)
    assert "| 24 |" in row and "val/acc" in row and "2 × Some CPU" in row


def test_a_record_on_the_corpus_split_and_the_speaker_folds_keeps_both_in_the_index(tmp_path):
    """Unseen speakers are claimed beside their cross-validated figure: a record of more than two groups shows
    the best group of each data split, not only its best group."""
    exp = tmp_path / "experiments" / "audio"
    exp.mkdir(parents=True)
    group = {"seeds": [0], "n": 3, "ci_seeds": [0.9, 1.0], "ci_pairs": [0.9, 1.0], "wall_s": None,
             "pairs_per_s": None}  # fmt: skip
    names = [("data=default ensemble=none", 0.997), ("data=speaker_folds ensemble=3 runs", 0.9964),
             ("data=speaker_folds ensemble=none", 0.9963)]  # fmt: skip
    summary = {"name": "audio", "command": "c", "environments": [],
               "groups": [{**group, "group": g, "mean": m} for g, m in names]}  # fmt: skip
    (exp / records.SUMMARY_FILE).write_text(json.dumps(summary))
    table = index.headline_table(exp.parent)
    assert "0.9970" in table and "0.9964" in table and "0.9963" not in table
