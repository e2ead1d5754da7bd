"""A search's record, read from its studies' journals: trials by state, epochs, wall time, the best trial and
its one test (python -m mmdigits.report --search)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.storages import JournalStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from mmdigits.analysis import search  # noqa: E402
from mmdigits.report import main as report_main  # noqa: E402
from mmdigits.utils.run import PREDICTIONS_FILE  # noqa: E402

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def make_study(sweep: Path, name: str, trials: list[tuple[str, float, list[float], float]]) -> None:
    """``trials``: (state, lr, val/acc per epoch, seconds), one after another; each with a run directory
    whose metrics.json names its best checkpoint."""
    sweep.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(sweep / search.JOURNAL_FILE)))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    start = T0
    for number, (state, lr, curve, seconds) in enumerate(trials):
        run = sweep / f"{number}_run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.ckpt").write_bytes(b"")
        best = str(run / "checkpoints" / "best.ckpt")
        (run / "metrics.json").write_text(json.dumps({"best_model_path": best, "epochs": len(curve)}))
        end = start + dt.timedelta(seconds=seconds)
        study.add_trial(
            FrozenTrial(
                number=number,
                state=TrialState[state],
                value=max(curve) if state == "COMPLETE" else None,
                values=None,
                datetime_start=start,
                datetime_complete=end,
                params={"model.optimizer.lr": lr},
                distributions={"model.optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True)},
                user_attrs={"run_dir": str(run)},
                system_attrs={},
                intermediate_values=dict(enumerate(curve)),
                trial_id=number,
            )
        )
        start = end


@pytest.fixture
def sweeps(tmp_path):
    pruned = tmp_path / "pruned"
    make_study(
        pruned,
        "lr",
        [
            ("COMPLETE", 0.003, [0.90, 0.95, 0.97], 30.0),
            ("PRUNED", 0.05, [0.50], 10.0),
            ("COMPLETE", 0.01, [0.91, 0.98, 0.96], 30.0),
        ],
    )
    whole = tmp_path / "whole"
    make_study(
        whole,
        "lr_no_pruning",
        [
            ("COMPLETE", 0.003, [0.90, 0.95, 0.97], 30.0),
            ("COMPLETE", 0.05, [0.50, 0.60, 0.70], 30.0),
            ("COMPLETE", 0.02, [0.91, 0.96, 0.965], 30.0),
        ],
    )
    return pruned, whole


def test_the_studies_table_counts_trials_epochs_and_wall_time_and_names_the_best_trial(sweeps):
    pruned, whole = sweeps
    name, trials = search.load_trials(pruned)
    s = search.study_summary(name, trials)
    assert (s["trials"], s["complete"], s["pruned"]) == (3, 2, 1)
    assert s["epochs trained"] == 7 and s["wall time (s)"] == 70 and s["s per epoch"] == "10.0"
    assert s["best trial"] == 2 and s["best val acc"] == pytest.approx(0.98)
    assert s["best params"] == "model.optimizer.lr=0.01"
    assert search.best_checkpoint(pruned) == pruned / "2_run" / "checkpoints" / "best.ckpt"
    text, groups = search.search_section([pruned, whole])
    joined = "\n".join(text)
    assert "`lr` trained 7 epochs in 70 s; `lr_no_pruning` 9 epochs in 90 s" in joined
    assert "ratio 0.78 in epochs, 0.78 in wall time" in joined
    assert groups == []  # the best trial was not tested yet: no test figure in the record
    assert "| lr_no_pruning | 1 | complete | 0.05 | 3 | 0.7000 | 30 | 1_run |" in joined  # every trial


def test_the_record_gives_the_best_trials_one_test_with_its_interval(sweeps, tmp_path):
    pruned, whole = sweeps
    tested = pruned / search.BEST_TEST_DIR
    tested.mkdir()
    target = np.arange(400) % 2
    decision = target.copy()
    decision[:10] = 1 - decision[:10]  # 390 of 400 right
    rows = np.stack([np.arange(400), target, decision, decision * 0.9], axis=1).astype(np.float32)
    np.save(tested / PREDICTIONS_FILE, rows)
    (tested / "metrics.json").write_text(
        json.dumps({"test/acc": 0.975, "test/f1": 0.97, "test/pairs_per_s": 9.0})
    )
    record = tmp_path / "experiments" / "search_lr"
    assert report_main(["--search", str(pruned), str(whole), "--record", str(record)]) == 0
    text = (record / "README.md").read_text()
    assert "## The best trial on the test split (lr, trial 2)" in text
    assert "test accuracy 0.9750" in text
    summary = json.loads((record / "summary.json").read_text())
    (group,) = summary["groups"]
    assert group["mean"] == pytest.approx(0.975) and group["n"] == 1
    lo, hi = group["ci_pairs"]
    assert lo < 390 / 400 < hi and hi - lo < 0.05


def test_a_directory_without_a_study_is_one_line_and_status_2(tmp_path, capsys):
    assert report_main(["--search", str(tmp_path), "--record", str(tmp_path / "r")]) == 2
    assert f"{tmp_path}: no optuna.journal" in capsys.readouterr().err
    assert search.main([str(tmp_path)]) == 2
    assert not (tmp_path / "r").exists()
