"""mmdigits.report: tables, seed groups, curves and the best run's confusion matrix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmdigits.analysis.plots import confusion_matrix
from mmdigits.analysis.runs import markdown_table, read_scalars, runs_frame, seed_groups, sort_runs
from mmdigits.report import write_report
from tests.trained_runs import seed_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset_dir):
    return seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)


def test_markdown_table_formats_and_aligns():
    df = pd.DataFrame({"run": ["a|b", "c"], "acc": [0.5, None], "params": [123456, 7]})
    lines = markdown_table(df).splitlines()
    assert lines[0] == "| run | acc | params |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | 0.5000 | 123,456 |"
    assert lines[3].startswith("| c | – |")


def test_a_fold_or_seed_column_with_gaps_shows_whole_numbers():
    """Runs on the corpus split have no fold: pandas stores the column as floats, which are still folds."""
    df = pd.DataFrame({"run": ["corpus", "fold3"], "seed": [1, 0], "fold": [None, 3], "epochs": [18.0, None]})
    assert df["fold"].dtype == float
    assert markdown_table(df).splitlines()[2:] == ["| corpus | 1 | – | 18 |", "| fold3 | 0 | 3 | – |"]


def test_seed_groups_mean_std_ignore_seed_only():
    cfg = lambda seed, fusion: {"seed": seed, "data.seed": seed, "model.fusion": fusion}  # noqa: E731
    df = pd.DataFrame(
        {
            "config": [cfg(0, "late"), cfg(1, "late"), cfg(0, "concat")],
            "choices": [{"fusion": "late", "trainer": "cpu"}] * 2 + [{"fusion": "concat", "trainer": "cpu"}],
            "model": ["m"] * 3,
            "fusion": ["late", "late", "concat"],
            "seed": [0, 1, 0],
            "test/acc": [0.8, 0.6, 0.9],
        }
    )
    groups = seed_groups(df)
    assert len(groups) == 1  # the concat run has no seed partner
    row = groups.iloc[0]
    assert row["group"] == "fusion=late" and row["n"] == 2 and row["seeds"] == "0,1"
    assert row["test/acc"] == f"0.7000 ± {np.std([0.8, 0.6], ddof=1):.4f}"


def test_seed_groups_are_sorted_by_the_reports_metric_and_show_it():
    """A study decided on the last epoch's ``val/acc`` is sorted by it, not by the best epoch's."""
    df = pd.DataFrame(
        {
            "group": ["a", "a", "b", "b"],
            "seed": [0, 1, 0, 1],
            "val/acc": [0.90, 0.92, 0.95, 0.97],
            "val/acc_best": [0.99, 0.99, 0.96, 0.98],
        }
    )
    assert seed_groups(df)["group"].tolist() == ["a", "b"]  # without a metric: the best epoch's
    groups = seed_groups(df, metric="val/acc")
    assert groups["group"].tolist() == ["b", "a"]
    assert groups["val/acc"].tolist() == ["0.9600 ± 0.0141", "0.9100 ± 0.0141"]


def test_groups_are_named_by_the_choices_that_tell_them_apart():
    """As the user typed them, in a fixed order, without choices that split nothing further."""
    runs = [
        {
            "experiment": "fusion_study",
            "audio_encoder": a,
            "fusion": f,
            "tuned": f,
            "model.optimizer.lr": "0.003",
        }
        for f in ("concat", "late")
        for a in ("crnn", "lstm")
        for _ in range(2)
    ]
    df = pd.DataFrame(
        {
            "config": [
                {"f": r["fusion"], "a": r["audio_encoder"], "seed": i % 2} for i, r in enumerate(runs)
            ],
            "choices": runs,
            "model": ["m"] * 8,
            "fusion": [r["fusion"] for r in runs],
            "seed": [i % 2 for i in range(8)],
            "test/acc": np.linspace(0.9, 0.99, 8),
        }
    )
    groups = seed_groups(df)
    assert list(groups["group"]) == [
        "fusion=late audio_encoder=lstm",
        "fusion=late audio_encoder=crnn",
        "fusion=concat audio_encoder=lstm",
        "fusion=concat audio_encoder=crnn",
    ]  # best first; the redundant "tuned" and the constant choices are left out
    assert (groups["n"] == 2).all()


def test_report_tables_curves_and_confusion(runs, tmp_path):
    sweep = runs[0]["dir"].parent
    out = tmp_path / "report"
    shutil.copytree(sweep, out / "sweep")
    report = write_report([out], metric="val/acc_best").read_text()
    df = sort_runs(runs_frame([out]), "val/acc_best")
    assert len(df) == 2 and set(df["seed"]) == {0, 1}
    assert list(df["val/acc_best"]) == sorted(df["val/acc_best"], reverse=True)
    row = df.iloc[0]
    assert (row["model"], row["audio_encoder"], row["image_encoder"], row["fusion"], row["task"]) == (
        "match_cnn1d_cnn_agreement", "cnn1d", "cnn", "agreement", "match"
    )  # fmt: skip
    assert row["params"] > 1000 and row["epochs"] == 1
    assert "| sweep/0_cnn1d_cnn |" in report or "| sweep/1_cnn1d_cnn |" in report
    summary = report.split("## Mean ± std over seeds")[1].split("## Every run")[0]
    header = next(line for line in summary.splitlines() if line.startswith("| group"))
    for column in ("test acc", "test AUROC", "parameters", "train pairs/s", "inference pairs/s",
                   "acc, image missing", "acc, audio missing"):  # fmt: skip
        assert column in header, column
    assert " ± " in summary and "test/auroc" in report.split("## Every run")[1]
    # from the copy's own checkpoint, named relative to the report: the folder can be moved as a whole
    assert f"recomputed from `sweep/{Path(row['dir']).name}/checkpoints/epoch_" in report
    # written elsewhere (as experiments/ reports are), it names the checkpoint as the tables name the run
    elsewhere = write_report([out / "sweep"], metric="val/acc_best", out_dir=tmp_path / "shared").read_text()
    best = sort_runs(runs_frame([out / "sweep"]), "val/acc_best").iloc[0]
    assert f"recomputed from `{best['run']}/checkpoints/epoch_" in elsewhere
    assert str(tmp_path) not in elsewhere
    for name in ("curves.png", "confusion.png"):
        assert (out / name).stat().st_size > 1000


def test_recomputed_confusion_matches_logged_test_accuracy(runs):
    run = runs[0]
    cm = confusion_matrix(run["dir"], run["ckpt"])
    assert cm.shape == (2, 2)
    assert np.trace(cm) / cm.sum() == pytest.approx(run["metrics"]["test/acc"], abs=1e-6)


def test_curves_come_from_the_event_files(runs):
    curves = read_scalars(runs[0]["dir"], ["val/acc", "val/loss", "no/such_tag"])
    assert set(curves) == {"val/acc", "val/loss"}
    steps, values = curves["val/acc"]
    assert len(steps) == 1 and values[-1] == pytest.approx(runs[0]["metrics"]["val/acc"], abs=1e-6)


def test_confusion_falls_back_to_logged_image_without_data(runs, tmp_path):
    run_dir = tmp_path / "moved"
    shutil.copytree(runs[0]["dir"], run_dir)
    recorded = json.loads((run_dir / "run.json").read_text())
    recorded["data"]["dir"] = str(tmp_path / "gone")
    (run_dir / "run.json").write_text(json.dumps(recorded))
    report = write_report([run_dir]).read_text()
    assert "logged during training" in report
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_clearly_without_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mmdigits.report", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no runs (metrics.json)" in proc.stderr


def test_search_without_test_metrics_reports_into_a_new_out_dir(runs, tmp_path):
    """A validation-only search (test=false) has no test metrics: no confusion matrix of test data is drawn,
    and --out may name a directory that does not exist yet."""

    sweep = tmp_path / "search"
    shutil.copytree(runs[0]["dir"].parent, sweep)
    for f in sweep.glob("*/metrics.json"):
        m = json.loads(f.read_text())
        f.write_text(json.dumps({k: v for k, v in m.items() if not k.startswith("test/")}))
    out = tmp_path / "new" / "report"
    report = write_report([sweep], metric="val/acc_best", out_dir=out).read_text()
    assert "## Best run" not in report and not (out / "confusion.png").exists()
    assert (out / "curves.png").stat().st_size > 1000 and "val/acc_best" in report


def test_a_run_whose_config_holds_an_interpolation_is_reported_without_its_data(runs, tmp_path):
    """An evaluate run's directory keeps Hydra's unresolved config and no run.json: its data settings are
    never resolved, so the report leaves that run out of the data-based parts instead of failing."""
    run_dir = tmp_path / "evaluated"
    shutil.copytree(runs[0]["dir"], run_dir)
    (run_dir / "run.json").unlink()
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\ndata:\n  seed: ${seed}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mmdigits.report", str(run_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_ensembles_evaluation_beside_its_members_is_reported(runs, tmp_path, tiny_dataset_dir):
    """``python -m mmdigits.evaluate ckpt_path=[a,b]`` in a sweep's folder: a row of its own (its members'
    parameters together), never a traceback."""
    sweep = tmp_path / "sweep"
    shutil.copytree(runs[0]["dir"].parent, sweep)
    from mmdigits.evaluate import evaluate
    from tests.hydra_utils import compose_cfg

    members = ",".join(str(r["ckpt"]) for r in runs)
    evaluated = [
        f"ckpt_path=[{members}]",
        f"data.dir={tiny_dataset_dir}",
        "trainer.enable_progress_bar=false",
    ]
    evaluate(compose_cfg("evaluate", evaluated, sweep / "ensemble2"))
    write_report([sweep])
    df = runs_frame([sweep]).set_index("run")
    assert df.loc["ensemble2", "params"] == df.loc["0_cnn1d_cnn", "params"] + df.loc["1_cnn1d_cnn", "params"]
    assert df.loc["ensemble2", "group"] == "ensemble=2 runs"  # named by its size
    assert set(df.drop("ensemble2")["group"]) == {"ensemble=none"}  # the members still one group
    for column in ("model", "audio_encoder", "image_encoder", "fusion", "task"):
        assert df.loc["ensemble2", column] == df.loc["0_cnn1d_cnn", column], column
    # its time is what it cost: its members' runs and its own evaluation
    members_s = df.loc["0_cnn1d_cnn", "wall_time_s"] + df.loc["1_cnn1d_cnn", "wall_time_s"]
    own_s = json.loads((sweep / "ensemble2" / "metrics.json").read_text())["wall_time_s"]
    assert own_s > 0 and df.loc["ensemble2", "wall_time_s"] == pytest.approx(members_s + own_s, abs=0.01)
    by_speaker = (sweep / "report.md").read_text().split("## Errors by speaker")[1]
    assert "### `ensemble=2 runs`" in by_speaker  # from the data the ensemble was scored on
