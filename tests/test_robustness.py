"""Robustness report (degraded test inputs) and training with modality dropout."""

from __future__ import annotations

import json
import math

import pytest

from mmdigits.analysis.robustness import robustness_report
from mmdigits.evaluate import evaluate
from mmdigits.models.loading import load_checkpoint_model
from tests.hydra_utils import compose_cfg
from tests.trained_runs import seed_runs, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset_dir):
    return seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)[0]


def test_evaluate_with_robustness_writes_table_and_plot(run, tmp_path, tiny_dataset_dir):
    cfg = compose_cfg(
        "evaluate",
        [f"ckpt_path={run['ckpt']}", f"data.dir={tiny_dataset_dir}", "+robustness=true",
         "trainer.enable_progress_bar=false"],
        tmp_path,
    )  # fmt: skip
    metrics = evaluate(cfg)
    rob = metrics["robustness"]
    assert json.loads((tmp_path / "metrics.json").read_text())["robustness"] == pytest.approx(rob)
    # level 0 of every degradation is the clean test accuracy
    for kind in ("image_noise", "audio_noise", "audio_time_mask", "image_missing", "audio_missing"):
        assert rob[f"{kind}@0"] == pytest.approx(metrics["test/acc"], abs=1e-6), kind
    assert rob["audio_missing@1"] != pytest.approx(metrics["test/acc"])  # dropping audio matters
    table = (tmp_path / "robustness.md").read_text()
    assert "| audio_time_mask | 0.5 |" in table
    assert len((tmp_path / "robustness.csv").read_text().splitlines()) == 1 + len(rob)
    assert (tmp_path / "robustness.png").stat().st_size > 1000


def test_unimodal_model_gets_only_its_degradations(tmp_path_factory, tiny_dataset_dir, make_tiny_datamodule):
    r = trained_run(tmp_path_factory.getbasetemp(), "image_only", tiny_dataset_dir, "model=image_only")
    model = load_checkpoint_model(r["ckpt"])
    dm = make_tiny_datamodule(task=model.task.name)
    rob = robustness_report(model, dm, tmp_path_factory.mktemp("rob"))
    assert {k.split("@")[0] for k in rob} == {"image_noise"}
    assert rob["image_noise@0"] == pytest.approx(r["metrics"]["test/acc"], abs=1e-6)


def test_training_with_modality_dropout_runs(tmp_path_factory, tiny_dataset_dir):
    r = trained_run(
        tmp_path_factory.getbasetemp(),
        "modality_dropout",
        tiny_dataset_dir,
        "model.modality_dropout=0.3",
        "trainer.max_epochs=2",
        "test=false",
    )
    m = r["metrics"]
    assert m["epochs"] == 2 and m["global_step"] > 2
    assert math.isfinite(m["train/loss"]) and math.isfinite(m["val/loss"])
    model = load_checkpoint_model(r["ckpt"])
    assert model.hparams.modality_dropout == 0.3
