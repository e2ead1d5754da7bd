"""Ensembles of checkpoints (``ckpt_path=[a,b]``) in evaluate and predict, against a plain loop's averages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from mmdigits.analysis.stats import read_predictions
from mmdigits.errors import CheckpointError, MMDigitsError
from mmdigits.evaluate import evaluate
from mmdigits.models.ensemble import check_members, nll
from mmdigits.models.loading import checkpoint_paths, load_model_and_data
from mmdigits.predict import predict, predict_single
from mmdigits.tasks import get_task
from tests.hydra_utils import compose_cfg
from tests.test_train import run_train

EVAL = ["data.eval_batch_size=64", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_dataset_dir) -> list[str]:
    """Two match models (2 epochs each on the tiny dataset) with different seeds and audio encoders: members
    need only share the task and the corpus."""
    paths = []
    for seed, audio in ((0, "cnn1d"), (1, "inception")):
        m = run_train(
            tmp_path_factory.mktemp(f"seed{seed}"),
            tiny_dataset_dir,
            "trainer.max_epochs=2",
            f"seed={seed}",
            f"audio_encoder={audio}",
        )
        paths.append(m["best_model_path"])
    return paths


def eval_cfg(name: str, ckpts: list[str], data_dir: Path, out: Path, *extra: str):
    return compose_cfg(name, [f"ckpt_path=[{','.join(ckpts)}]", f"data.dir={data_dir}", *EVAL, *extra], out)


@torch.no_grad()
def plain_mean_proba(cfg, ckpts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: each model's probabilities by a hand-written loop over the test rows, averaged."""
    probas, target = [], None
    for path in ckpts:
        model, dm = load_model_and_data(cfg, path)
        dm.prepare_data()
        dm.setup("test")
        by_row: dict[int, tuple[float, int]] = {}
        for batch in dm.test_dataloader():
            p = model.eval().predict_proba(batch)
            by_row.update(zip(batch["index"].tolist(), zip(p.tolist(), batch["target"].tolist())))
        rows = sorted(by_row)
        probas.append(torch.tensor([by_row[r][0] for r in rows]))
        target = torch.tensor([by_row[r][1] for r in rows])
    return torch.stack(probas).mean(0), target


def test_ensemble_of_one_model_twice_scores_as_that_model(two_runs, tiny_dataset_dir, tmp_path):
    single = evaluate(eval_cfg("evaluate", two_runs[:1], tiny_dataset_dir, tmp_path / "one"))
    twice = evaluate(eval_cfg("evaluate", [two_runs[0]] * 2, tiny_dataset_dir, tmp_path / "two"))
    assert single["ckpt_path"] == two_runs[0] and twice["ckpt_path"] == [two_runs[0]] * 2
    for key in ("test/acc", "test/f1", "test/auroc"):
        assert twice[key] == pytest.approx(single[key], abs=1e-6), key
    assert twice["test/member_acc"] == pytest.approx([single["test/acc"]] * 2, abs=1e-6)


def test_ensemble_metrics_are_those_of_the_mean_probability(two_runs, tiny_dataset_dir, tmp_path):
    cfg = eval_cfg("evaluate", two_runs, tiny_dataset_dir, tmp_path)
    metrics = evaluate(cfg)
    encoders = {type(load_model_and_data(cfg, p)[0].audio_encoder).__name__ for p in two_runs}
    assert encoders == {"CNN1dEncoder", "InceptionEncoder"}  # a mixed ensemble
    proba, target = plain_mean_proba(cfg, two_runs)
    assert metrics["test/acc"] == pytest.approx(float(BinaryAccuracy()(proba, target)), abs=1e-6)
    assert metrics["test/auroc"] == pytest.approx(float(BinaryAUROC()(proba, target)), abs=1e-6)
    assert metrics["test/nll"] == pytest.approx(
        float(F.binary_cross_entropy(proba, target.float())), rel=1e-4
    )
    singles = [
        evaluate(eval_cfg("evaluate", [p], tiny_dataset_dir, tmp_path / f"m{i}"))
        for i, p in enumerate(two_runs)
    ]
    assert metrics["test/member_acc"] == pytest.approx([s["test/acc"] for s in singles], abs=1e-6)
    assert (tmp_path / "metrics.json").exists()
    rows = read_predictions(tmp_path)  # as a run's: index, target, decision, P(match), in row order
    assert np.array_equal(rows[:, :2], read_predictions(tmp_path / "m0")[:, :2])  # a member's rows
    assert rows[:, 3] == pytest.approx(proba.double().numpy(), abs=1e-6)
    assert (rows[:, 2] == rows[:, 1]).mean() == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_predict_writes_the_ensembles_decisions(two_runs, tiny_dataset_dir, tmp_path):
    cfg = eval_cfg("predict", two_runs, tiny_dataset_dir, tmp_path, f"output={tmp_path / 'result.npy'}")
    result = predict(cfg)
    proba, _ = plain_mean_proba(eval_cfg("evaluate", two_runs, tiny_dataset_dir, tmp_path / "ref"), two_runs)
    np.testing.assert_array_equal(result, (proba > 0.5).numpy())
    assert np.array_equal(np.load(tmp_path / "result.npy"), result)


def test_members_must_share_the_task(two_runs, tiny_dataset_dir, tmp_path):
    cfg = eval_cfg("evaluate", two_runs, tiny_dataset_dir, tmp_path)
    models = [load_model_and_data(cfg, p)[0] for p in two_runs]
    check_members(models, two_runs)  # same task: accepted
    models[1].task = get_task("digit")
    with pytest.raises(CheckpointError, match=rf"{two_runs[1]}: .*'digit' task.*'match'"):
        check_members(models, two_runs)
    models[1].task = models[0].task
    models[1].hparams.data_info = {**(models[1].hparams.get("data_info") or {}), "audio": "fsdd"}
    models[0].hparams.data_info = {**(models[0].hparams.get("data_info") or {}), "audio": "arabic"}
    with pytest.raises(CheckpointError, match=r"'fsdd' audio"):
        check_members(models, two_runs)


def test_checkpoint_paths_and_one_pair_refusal(two_runs, tmp_path):
    assert checkpoint_paths("a.ckpt") == ["a.ckpt"]
    assert checkpoint_paths(OmegaConf.create({"p": ["a", "b"]}).p) == ["a", "b"]
    with pytest.raises(MMDigitsError, match=r"ckpt_path=\[\]"):
        checkpoint_paths([])
    cfg = compose_cfg(
        "predict", [f"ckpt_path=[{','.join(two_runs)}]", "image=x.png", "audio=x.wav"], tmp_path
    )
    with pytest.raises(MMDigitsError, match="one pair .* takes one checkpoint"):
        predict_single(cfg)
    embed = compose_cfg("embed", [f"ckpt_path=[{','.join(two_runs)}]"], tmp_path / "embed")
    with pytest.raises(MMDigitsError, match="takes one checkpoint, not a list of 2"):
        load_model_and_data(embed)  # the commands that read one model (embed) refuse a list
    robust = [f"ckpt_path=[{','.join(two_runs)}]", "+robustness=true"]
    robust = compose_cfg("evaluate", robust, tmp_path / "robust")
    with pytest.raises(MMDigitsError, match=r"\+robustness=true takes one checkpoint, not a list of 2"):
        evaluate(robust)
    # a list of one is that checkpoint: the command goes on, to the (missing) image
    one = [f"ckpt_path=[{two_runs[0]}]", "image=missing.png", "audio=missing.wav"]
    with pytest.raises(MMDigitsError, match="missing.png"):
        predict_single(compose_cfg("predict", one, tmp_path / "one"))


def test_nll_matches_torch_losses():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, generator=g).clamp(0.01, 0.99)
    y = (torch.rand(50, generator=g) > 0.5).long()
    assert nll(get_task("match"), p, y) == pytest.approx(
        float(F.binary_cross_entropy(p, y.float())), rel=1e-5
    )
    logits = torch.randn(50, 10, generator=g)
    d = torch.randint(0, 10, (50,), generator=g)
    expected = float(F.cross_entropy(logits, d))
    assert nll(get_task("digit"), logits.softmax(-1), d) == pytest.approx(expected, rel=1e-5)


@torch.no_grad()
def test_evaluate_test_time_shifts_override_scores_the_mean_of_the_shifted_views(
    two_runs, tiny_dataset_dir, tmp_path
):
    """``test_time_shifts=true`` turns the image's 1-pixel shifts on for a checkpoint trained without them:
    its test metrics are those of a hand-written loop's mean probabilities over the five views."""
    from mmdigits.models.augment import ONE_PIXEL_SHIFTS, shift_image

    plain = evaluate(eval_cfg("evaluate", two_runs[:1], tiny_dataset_dir, tmp_path / "plain"))
    cfg = eval_cfg("evaluate", two_runs[:1], tiny_dataset_dir, tmp_path / "tta", "test_time_shifts=true")
    shifted = evaluate(cfg)
    model, dm = load_model_and_data(eval_cfg("evaluate", two_runs[:1], tiny_dataset_dir, tmp_path / "ref"))
    assert not model.hparams.get("test_time_shifts")  # trained without: the override alone turns it on
    dm.prepare_data()
    dm.setup("test")
    probas, targets = [], []
    for batch in dm.test_dataloader():
        views = [batch["image"]] + [shift_image(batch["image"], dx, dy) for dx, dy in ONE_PIXEL_SHIFTS]
        probas.append(torch.stack([model.eval().predict_proba({**batch, "image": v}) for v in views]).mean(0))
        targets.append(batch["target"])
    proba, target = torch.cat(probas), torch.cat(targets)
    assert shifted["test/acc"] == pytest.approx(float(BinaryAccuracy()(proba, target)), abs=1e-6)
    assert shifted["test/auroc"] == pytest.approx(float(BinaryAUROC()(proba, target)), abs=1e-6)
    assert shifted["test/auroc"] != pytest.approx(plain["test/auroc"], abs=1e-6)  # the views changed it
