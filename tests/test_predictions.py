"""Every run saves its test predictions and where it ran: what the report's statistics are computed from."""

from __future__ import annotations

import numpy as np
import pytest

from mmdigits.data.npy import load_npy
from mmdigits.utils.run import PREDICTIONS_FILE
from tests.trained_runs import trained_run


@pytest.mark.parametrize("task", ["match", "digit"])
def test_run_saves_one_prediction_per_test_pair_that_reproduce_its_accuracy(task, tmp_path, tiny_dataset_dir):
    run = trained_run(tmp_path, f"pred_{task}", tiny_dataset_dir, f"task={task}")
    rows = load_npy(run["dir"] / PREDICTIONS_FILE)
    n_test = len(np.load(tiny_dataset_dir / "written_test.npy"))
    assert rows.shape == (n_test, 4)
    index, target, decision, proba = rows.T
    assert (index == np.arange(n_test)).all()  # every pair once, in the data's order
    assert np.array_equal(np.unique(target), np.unique(target).astype(int))
    assert ((proba >= 0) & (proba <= 1)).all()
    if task == "match":
        assert set(np.unique(target)) <= {0, 1} and ((proba > 0.5) == (decision == 1)).all()
    else:
        assert (proba >= 0.1 - 1e-6).all()  # the decided digit is the most probable of ten
    assert np.mean(decision == target) == pytest.approx(run["metrics"]["test/acc"], abs=1e-6)


def test_run_records_its_machine_commit_and_library_versions(tmp_path, tiny_dataset_dir):
    env = trained_run(tmp_path, "pred_match", tiny_dataset_dir, "task=match")["metrics"]["environment"]
    assert env["torch"] and env["lightning"] and env["numpy"] and env["python"]
    assert env["cpu"] and env["cpu_count"] >= 1
    assert env["commit"] is None or len(env["commit"].split("+")[0]) == 40
