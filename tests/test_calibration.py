"""Temperature scaling of an expert on its validation part, and the expected calibration error."""

from __future__ import annotations

import json

import pytest
import torch

from mmdigits.evaluate import evaluate
from mmdigits.models.calibration import expected_calibration_error, fit_temperature, nll
from tests.hydra_utils import compose_cfg
from tests.trained_runs import trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_temperature_recovers_the_temperature_that_made_the_logits():
    g = torch.Generator().manual_seed(0)
    true = 3 * torch.randn(4000, 10, generator=g)
    targets = torch.multinomial(true.softmax(-1), 1, generator=g).squeeze(1)
    assert fit_temperature(2.5 * true, targets) == pytest.approx(2.5, rel=0.08)  # overconfident: T > 1
    assert fit_temperature(0.5 * true, targets) == pytest.approx(0.5, rel=0.08)  # underconfident: T < 1
    binary = 2 * torch.randn(4000, generator=g)
    labels = torch.bernoulli(binary.sigmoid(), generator=g)
    assert fit_temperature(3 * binary, labels) == pytest.approx(3, rel=0.1)
    t = fit_temperature(2.5 * true, targets)
    assert nll(2.5 * true, targets, t) < nll(2.5 * true, targets)
    assert expected_calibration_error(2.5 * true, targets, t) < expected_calibration_error(
        2.5 * true, targets
    )


def test_ece_of_sure_predictions_is_their_error_rate():
    logits = torch.full((4, 10), -50.0)
    logits[torch.arange(4), torch.tensor([1, 1, 2, 2])] = 50.0
    assert expected_calibration_error(logits, torch.tensor([1, 1, 1, 2])) == pytest.approx(0.25)


def test_temperature_scaling_lowers_the_validation_nll_of_a_label_smoothed_expert(
    tmp_path_factory, tmp_path, tiny_dataset_dir
):
    run = trained_run(tmp_path_factory.getbasetemp(), "smoothed_expert", tiny_dataset_dir, "model=audio_only",
                      "model.label_smoothing=0.3", "trainer.max_epochs=4")  # fmt: skip
    assert 0 <= run["metrics"]["test/ece"] <= 1 and "val/ece" in run["metrics"]  # beside the accuracy
    args = [f"ckpt_path={run['ckpt']}", f"data.dir={tiny_dataset_dir}", "calibrate=true"]
    cfg = compose_cfg("evaluate", [*args, "trainer.enable_progress_bar=false"], tmp_path)
    metrics = evaluate(cfg)
    cal = metrics["calibration"]
    assert json.loads((tmp_path / "metrics.json").read_text())["calibration"] == cal
    assert cal["temperature"] < 1  # smoothing taught it to be unsure: scaling sharpens
    assert cal["val"]["nll_scaled"] < cal["val"]["nll"] - 1e-3
    assert cal["val"]["ece_scaled"] < cal["val"]["ece"]
    assert cal["test"]["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)  # the same decisions
    assert cal["test"]["ece"] == pytest.approx(metrics["test/ece"], abs=1e-4)  # the run's own metric
