"""``python -m mmdigits.evaluate split=val``: a checkpoint, or an ensemble, scored on the validation part its
training carved, so that ensembles can be chosen without the test split."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from mmdigits.errors import CheckpointError, MMDigitsError
from mmdigits.evaluate import evaluate
from mmdigits.models.ensemble import row_proba, rows_and_targets, score
from mmdigits.models.loading import load_model_and_data
from tests.hydra_utils import compose_cfg
from tests.test_train import run_train

EVAL = ["data.eval_batch_size=64", "trainer.enable_progress_bar=false"]
AUDIO = ["model=audio_only", "task=audio_digit", "trainer.max_epochs=2", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset_dir) -> dict[str, dict]:
    """Three audio-digit runs: seeds 0 and 1 on one validation part (``data.seed=0``), and seed 2 on another
    (``data.seed=2``)."""
    out = {}
    for name, seeds in (
        ("a", ("seed=0", "data.seed=0")),
        ("b", ("seed=1", "data.seed=0")),
        ("c", ("seed=2",)),
    ):
        out[name] = run_train(tmp_path_factory.mktemp(name), tiny_dataset_dir, *AUDIO, *seeds)
    return out


def last(run: dict) -> str:
    """The checkpoint of the run's last epoch, whose validation accuracy the run logged last."""
    return str(Path(run["best_model_path"]).parent / "last.ckpt")


def val_cfg(ckpts: list[str], data_dir: Path, out: Path, *extra: str, split: str = "val"):
    return compose_cfg(
        "evaluate",
        [f"ckpt_path=[{','.join(ckpts)}]", f"data.dir={data_dir}", f"split={split}", *EVAL, *extra],
        out,
    )


def test_a_checkpoint_scores_on_validation_what_its_run_logged(runs, tiny_dataset_dir, tmp_path):
    run = runs["a"]
    metrics = evaluate(val_cfg([last(run)], tiny_dataset_dir, tmp_path, "data.val_fraction=0.25", "seed=0"))
    assert not any(k.startswith("test/") for k in metrics)
    assert metrics["val/acc"] == pytest.approx(run["val/acc"], abs=1e-6)
    assert metrics["environment"]["torch"] == torch.__version__  # where it was scored, as a run records it


def test_an_ensemble_on_validation_scores_the_mean_probability(runs, tiny_dataset_dir, tmp_path):
    ckpts = [last(runs["a"]), last(runs["b"])]
    cfg = val_cfg(ckpts, tiny_dataset_dir, tmp_path, "data.val_fraction=0.25", "seed=0")
    metrics = evaluate(cfg)
    assert metrics["val/member_acc"] == pytest.approx([runs["a"]["val/acc"], runs["b"]["val/acc"]], abs=1e-6)
    probas, target = [], None
    for path in ckpts:  # a plain reference: each member on the validation loader, averaged
        model, dm = load_model_and_data(cfg, path)
        dm.prepare_data()
        dm.setup("fit")
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        probas.append(row_proba(trainer, model, dm.val_dataloader()))
        target = rows_and_targets(dm.val_dataloader())[1]
    expected = score(model.task, torch.stack(probas).mean(0), target, prefix="val/")
    assert metrics["val/acc"] == pytest.approx(expected["val/acc"], abs=1e-6)
    assert metrics["val/nll"] == pytest.approx(expected["val/nll"], abs=1e-5)


def test_validation_is_refused_with_another_split_than_the_checkpoints(runs, tiny_dataset_dir, tmp_path):
    """Scored on rows it trained on, a model looks better than it is: another fraction or seed is refused."""
    cases = (
        (["data.val_fraction=0.1", "seed=0"], "data.val_fraction"),
        (["data.val_fraction=0.25", "seed=3"], "data.seed"),
    )
    for extra, named in cases:
        with pytest.raises(MMDigitsError, match=named):
            evaluate(val_cfg([last(runs["a"])], tiny_dataset_dir, tmp_path / named, *extra))


def test_an_ensemble_whose_members_split_differently_is_refused_on_validation(
    runs, tiny_dataset_dir, tmp_path
):
    """Member c's validation speakers are others' training speakers: no validation part holds for all."""
    with pytest.raises(CheckpointError, match=r"data\.seed"):
        members = [last(runs["a"]), last(runs["c"])]
        evaluate(val_cfg(members, tiny_dataset_dir, tmp_path, "data.val_fraction=0.25", "seed=0"))


def test_an_unknown_split_is_one_clear_error(runs, tiny_dataset_dir, tmp_path):
    with pytest.raises(MMDigitsError, match="split=train"):
        evaluate(val_cfg([last(runs["a"])], tiny_dataset_dir, tmp_path, split="train"))
