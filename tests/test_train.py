"""Training, resuming, evaluating and predicting end to end on the tiny dataset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmdigits.evaluate import evaluate
from mmdigits.models.loading import read_checkpoint
from mmdigits.predict import predict
from mmdigits.train import train
from mmdigits.utils.run import PREDICTIONS_FILE
from tests.hydra_utils import compose_cfg, plain_unless_a_recipe
from tests.synthetic import write_challenge_files

REPO = Path(__file__).resolve().parents[1]
MODELS = [
    "cnn1d_lenet",
    "cnn1d_deep_conv_fast",
    "cnn1d_deltas_conv_fast",
    "cnn1d_resnet",
    "lstm_cnn",
    "cnn1d_cnn",
    "crnn_cnn",
    "transformer_cnn",
    "cnn2d_cnn",
    "seed",
]
QUIET = ["~callbacks.rich_progress_bar", "trainer.enable_model_summary=false"]


def train_overrides(data_dir: Path, *extra: str) -> list[str]:
    """The plain training (``~experiment``): the default run's recipe is tested on its own, below."""
    batches = ["data.batch_size=32", "data.eval_batch_size=64"]
    return [*plain_unless_a_recipe(extra), f"data.dir={data_dir}", *batches, *QUIET, *extra]


def run_train(tmp_path: Path, data_dir: Path, *extra: str) -> dict:
    cfg = compose_cfg("train", train_overrides(data_dir, *extra), tmp_path)
    return train(cfg)


@pytest.mark.parametrize("task", ["match", "digit", "image_digit", "audio_digit"])
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_model_and_task(model, task, tmp_path, tiny_dataset_dir):
    metrics = run_train(tmp_path, tiny_dataset_dir, f"model={model}", f"task={task}", "debug=fast_dev_run")
    assert metrics["global_step"] == 1
    assert np.isfinite(metrics["test/acc"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=image_only"],
        ["model=audio_only"],
        ["model=audio_only", "audio_encoder=inception"],
        [
            "model=image_only",
            "model.mixup_alpha=0.4",
            "model.label_smoothing=0.1",
            "model.test_time_shifts=true",
        ],
        ["task=digit", "model.mixup_alpha=0.4"],  # with the heads' digit loss on both labels
    ],
    ids=["image_only", "audio_only", "audio_only_inception", "image_only_mixup", "digit_mixup"],
)
def test_fast_dev_run_unimodal(overrides, tmp_path, tiny_dataset_dir):
    metrics = run_train(tmp_path, tiny_dataset_dir, *overrides, "debug=fast_dev_run")
    assert metrics["global_step"] == 1 and np.isfinite(metrics["test/acc"])


@pytest.mark.parametrize("audio", [[], ["audio_encoder=rocket"]], ids=["default", "rocket"])
@pytest.mark.parametrize("fusion", ["concat", "late", "gated", "lowrank_tensor", "agreement"])
def test_fast_dev_run_every_fusion(fusion, audio, tmp_path, tiny_dataset_dir):
    metrics = run_train(tmp_path, tiny_dataset_dir, f"fusion={fusion}", "debug=fast_dev_run", *audio)
    assert np.isfinite(metrics["test/acc"])


@pytest.mark.parametrize(
    ("experiment", "monitor", "best"), [("match_accurate", "val/loss", min), ("match_only", "val/acc", max)]
)
def test_recipe_tests_the_epoch_its_rule_picks(experiment, monitor, best, tmp_path, tiny_dataset_dir):
    """match_accurate (EMA, augmentation) tests the epoch with the lowest validation loss; match_only the
    first epoch with the best validation accuracy."""
    metrics = run_train(tmp_path, tiny_dataset_dir, f"experiment={experiment}", "trainer.max_epochs=3")
    assert np.isfinite(metrics["test/acc"])
    values = [e.value for e in EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars(monitor)]
    assert len(values) == 3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    picked = int(re.search(r"epoch_(\d+)\.ckpt$", saved["best_model_path"]).group(1))
    assert picked == values.index(best(values)), (picked, values)


@pytest.mark.parametrize("experiment", ["audio_only", "image_only_mnist_all"])
def test_refit_recipe_trains_on_every_row_and_tests_its_last_epoch(experiment, tmp_path, tiny_dataset_dir):
    """Recipes refit on train + validation (val_fraction 0) have nothing to select on: no validation
    metrics, and the checkpoint tested is the last epoch's."""
    tiny = ["trainer.max_epochs=2", "data.build=null"]  # the tiny dataset is not the 60,000-image build
    metrics = run_train(tmp_path, tiny_dataset_dir, f"experiment={experiment}", *tiny)
    assert np.isfinite(metrics["test/acc"])
    assert "val/acc" not in EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert Path(saved["best_model_path"]).name == "last_epoch.ckpt"
    assert read_checkpoint(saved["best_model_path"])["epoch"] == 1  # the last of epochs 0, 1


def test_bf16_autocast_smoke_on_cpu(tmp_path, tiny_dataset_dir):
    metrics = run_train(tmp_path, tiny_dataset_dir, "trainer=cpu_bf16", "debug=fast_dev_run")
    assert np.isfinite(metrics["test/acc"])


def test_train_learns_and_writes_outputs(tmp_path, tiny_dataset_dir):
    metrics = run_train(tmp_path, tiny_dataset_dir, "trainer.max_epochs=4", "logger=many")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    # the tiny data is learnable: better than always answering "no match"
    test_pos_rate = np.load(tiny_dataset_dir / "match_test.npy").mean()
    assert metrics["test/acc"] > max(test_pos_rate, 1 - test_pos_rate)
    assert Path(saved["best_model_path"]).is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(saved["best_model_path"], weights_only=False)
    assert ckpt["state_dict"]["audio_std"].shape == (13,)
    assert not torch.allclose(ckpt["state_dict"]["audio_std"], torch.ones(13))  # stats were set
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert {"val/acc", "val/acc_best", "test/acc", "test/f1", "test/auroc"} <= set(tags)
    assert "test/confusion_matrix" in events.Tags()["images"]


def test_the_default_recipe_trains_its_budget_and_tests_its_lowest_validation_loss(
    tmp_path, tiny_dataset_dir
):
    """The default run's recipe (experiment=default): EMA, no early stopping, the checkpoint by val/loss."""
    overrides = [f"data.dir={tiny_dataset_dir}", "data.batch_size=32", "data.eval_batch_size=64", *QUIET]
    metrics = train(compose_cfg("train", [*overrides, "trainer.max_epochs=3", "logger=csv"], tmp_path))
    assert metrics["epochs"] == 3 and metrics["stopped_by"] == "max_epochs"
    ckpt = torch.load(metrics["best_model_path"], weights_only=False)
    states = ckpt["callbacks"]
    checkpoint = next(v for k, v in states.items() if k.startswith("ModelCheckpoint"))
    assert "'monitor': 'val/loss'" in next(k for k in states if k.startswith("ModelCheckpoint"))
    assert checkpoint["best_model_score"] == min(
        float(v) for v in pd.read_csv(next(tmp_path.rglob("metrics.csv")))["val/loss"].dropna()
    )
    assert any(k.startswith("EMAWeightAveraging") for k in states)


def test_resume_continues_epoch_counter(tmp_path, tiny_dataset_dir):
    # a one-cycle schedule is fixed by max_epochs, so extending a run needs a schedule-free optimiser
    run_train(tmp_path, tiny_dataset_dir, "trainer.max_epochs=1", "test=false", "model.scheduler=null")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    metrics = run_train(
        tmp_path,
        tiny_dataset_dir,
        "trainer.max_epochs=2",
        "ckpt_path=last",
        "test=false",
        "model.scheduler=null",
    )
    assert metrics["epochs"] == 2
    assert torch.load(last, weights_only=False)["epoch"] == 1


@pytest.mark.parametrize("callbacks", ["default", "[default,ema]"])
def test_evaluate_reproduces_train_test_metrics(callbacks, tmp_path, tiny_dataset_dir):
    """With EMA both score the checkpoint's averaged weights (Lightning's WeightAveraging, left holding its
    copy after fit, would otherwise put the raw training weights back for the test after training)."""
    metrics = run_train(
        tmp_path / "train", tiny_dataset_dir, "trainer.max_epochs=2", f"callbacks={callbacks}"
    )
    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={metrics['best_model_path']}",
            f"data.dir={tiny_dataset_dir}",
            "data.eval_batch_size=64",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "eval",
    )
    again = evaluate(cfg)
    for key in ("test/acc", "test/f1", "test/auroc", "test/loss"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    # the same predictions per pair, saved beside its metrics.json as a training run saves them
    trained = np.load(Path(metrics["best_model_path"]).parents[1] / PREDICTIONS_FILE)
    np.testing.assert_allclose(np.load(tmp_path / "eval" / PREDICTIONS_FILE), trained, atol=1e-6)


def test_stopped_by_reports_the_fit_not_the_test_reload(tmp_path, tiny_dataset_dir, monkeypatch):
    """Testing the best checkpoint reloads the Timer's saved training time on top of the fit's own: a run that
    finished its epochs was recorded as cut short by trainer.max_time once its training took half the cap."""
    from lightning.pytorch.callbacks import Timer

    saved = Timer.state_dict

    def long_ago(self):  # as if each checkpoint had been saved after 10 minutes of training
        state = saved(self)
        return {**state, "time_elapsed": {**state["time_elapsed"], "train": 600.0}}

    monkeypatch.setattr(Timer, "state_dict", long_ago)
    metrics = run_train(tmp_path, tiny_dataset_dir, "trainer.max_epochs=1", "trainer.max_time=00:00:05:00")
    assert "test/acc" in metrics and metrics["epochs"] == 1
    assert metrics["stopped_by"] == "max_epochs"


@pytest.fixture(scope="module")
def big_test_dir(tmp_path_factory, tiny_raw_dir):
    """Tiny corpora, but the challenge's 15,000 test pairs."""
    from mmdigits.data.build import build_dataset

    out = tmp_path_factory.mktemp("big_test")
    build_dataset(out, tiny_raw_dir, n_train=300, n_test=15000, match_rate=0.1, seed=0, verify=False)
    return out


def test_predict_writes_one_boolean_per_test_pair(tmp_path, tiny_dataset_dir, big_test_dir):
    metrics = run_train(tmp_path / "train", tiny_dataset_dir, "trainer.max_epochs=1", "test=false")
    ckpt = metrics["best_model_path"]
    out = tmp_path / "result.npy"
    cfg = compose_cfg(
        "predict",
        [
            f"ckpt_path={ckpt}",
            f"data.dir={big_test_dir}",
            f"output={out}",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "pred",
    )
    result = predict(cfg)
    saved = np.load(out)
    assert saved.dtype == np.bool_ and saved.shape == (15000,)
    assert np.array_equal(saved, result)


def test_predict_restores_row_order_after_length_sorting(tmp_path, tiny_dataset_dir):
    from mmdigits.data.datamodule import MMDigitsDataModule
    from mmdigits.models.loading import load_checkpoint_model

    # digit task: ten possible answers, so a permuted row order cannot go unnoticed
    metrics = run_train(
        tmp_path / "train", tiny_dataset_dir, "task=digit", "trainer.max_epochs=1", "test=false"
    )
    model = load_checkpoint_model(metrics["best_model_path"]).eval()
    dm = MMDigitsDataModule(dir=str(tiny_dataset_dir), task="digit", eval_batch_size=64, bucketing=False)
    dm.setup("predict")
    with torch.no_grad():  # reference: rows in file order
        proba = torch.cat([model.predict_proba(b) for b in dm.predict_dataloader()])
    cfg = compose_cfg(
        "predict",
        [
            f"ckpt_path={metrics['best_model_path']}",
            f"data.dir={tiny_dataset_dir}",
            f"output={tmp_path / 'r.npy'}",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "pred",
    )
    result = predict(cfg)  # length-sorted batches
    assert np.array_equal(result, proba.argmax(-1).numpy())
    assert len(np.unique(result)) > 2


def run_sweep(sweep_dir: Path, data_dir: Path, *overrides: str) -> None:
    """``python -m mmdigits.train -m ...`` for one epoch per job; fails the test on a non-zero exit."""
    cmd = [
        sys.executable,
        "-m",
        "mmdigits.train",
        "-m",
        *overrides,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
        *train_overrides(data_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_sweep_runs_side_by_side_in_tensorboard(tmp_path, tiny_dataset_dir):
    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, tiny_dataset_dir, "fusion=concat,gated")
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").exists())
    assert len(runs) == 2
    for run in runs:
        events = EventAccumulator(str(run / "tensorboard")).Reload()
        assert {"val/acc", "test/acc"} <= set(events.Tags()["scalars"])
        # the HParams tab: hyperparameters + the metrics to show beside them
        hparams = events.PluginTagToContent("hparams")
        assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
        assert (
            b"test/acc" in hparams["_hparams_/experiment"]
            and b"fusion" in hparams["_hparams_/session_start_info"]
        )


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_best(tmp_path, tiny_dataset_dir):
    sweep_dir = tmp_path / "optuna"
    run_sweep(
        sweep_dir,
        tiny_dataset_dir,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
    )
    runs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert len(runs) == 2 and all(0.0 <= r["val/acc_best"] <= 1.0 for r in runs)
    best = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_value" in best


def test_original_challenge_files_train_and_predict(tmp_path, tiny_dataset_dir):
    """Only the five files the original challenge ships: no labels beyond match_train, no manifest."""
    challenge = write_challenge_files(tiny_dataset_dir, tmp_path / "challenge")
    metrics = run_train(tmp_path / "run", challenge, "trainer.max_epochs=1")
    assert "test/acc" not in metrics  # nothing to score the test split against
    assert sorted(p.name for p in challenge.iterdir()) == sorted(  # nothing was built over them
        f"{n}.npy" for n in ("written_train", "spoken_train", "match_train", "written_test", "spoken_test")
    )
    out = tmp_path / "result.npy"
    cfg = compose_cfg(
        "predict",
        [
            f"ckpt_path={metrics['best_model_path']}",
            f"data.dir={challenge}",
            f"output={out}",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "pred",
    )
    predict(cfg)
    result = np.load(out)
    assert result.dtype == np.bool_ and len(result) == len(
        np.load(challenge / "spoken_test.npy", allow_pickle=True)
    )
