"""Distributed training on CPU (``trainer=ddp_cpu``: 2 processes, gloo) and the samplers' rank shards.

What is comparable between a 2-process run and a 1-process run:

* evaluation is exact: the eval samplers give each rank a disjoint contiguous shard (no padding) and the
  metrics are synced, so the same checkpoint scores the same test metrics under DDP as in one process;
* training is close, not equal: with ``bucketing=false`` and the same global batch (2 x 8 vs 16) every
  optimiser step sees the same rows, but BatchNorm statistics are per rank (8 rows) and the dropout draws
  differ, so the trajectories part. Tolerance: final test accuracy and AUROC within 0.05 (absolute).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmdigits.data.datamodule import MMDigitsDataModule
from mmdigits.data.samplers import EvalBatchSampler, TrainBatchSampler
from mmdigits.evaluate import evaluate
from mmdigits.models.loading import load_checkpoint_model
from tests.hydra_utils import compose_cfg
from tests.test_reliability import read_metrics, run_cli, train_args

DDP_TOLERANCE = 0.05


def rank_rows(sampler_for_rank, world: int = 2) -> list[np.ndarray]:
    return [np.concatenate([b.numpy() for b in sampler_for_rank(r)]) for r in range(world)]


@pytest.mark.parametrize("n", [360, 361])
@pytest.mark.parametrize("bucketing", [False, True])
def test_train_shards_cover_every_row_once_per_epoch(n, bucketing):
    lengths = np.random.default_rng(0).integers(5, 90, n)

    def sampler(rank: int) -> TrainBatchSampler:
        s = TrainBatchSampler(n, 16, lengths=lengths, bucketing=bucketing, seed=3, num_replicas=2, rank=rank)
        s.set_epoch(4)
        return s

    shards = rank_rows(sampler)
    assert len(shards[0]) == len(shards[1]) == -(-n // 2)  # same number of rows (and batches) per rank
    assert len(list(sampler(0))) == len(list(sampler(1)))
    union = np.concatenate(shards)
    assert set(union.tolist()) == set(range(n))
    # disjoint, except the len(union) - n rows that pad an odd epoch so that both ranks stay in step
    assert len(union) - len(np.unique(union)) == len(union) - n == n % 2
    # and a new epoch reshuffles
    later = sampler(0)
    later.set_epoch(5)
    assert not np.array_equal(np.concatenate([b.numpy() for b in later]), shards[0])


@pytest.mark.parametrize("n", [200, 201, 7])
def test_eval_shards_are_disjoint_and_cover_everything(n):
    shards = rank_rows(lambda r: EvalBatchSampler(n, 64, num_replicas=2, rank=r))
    assert np.array_equal(np.concatenate(shards), np.arange(n))  # disjoint, contiguous, in order
    assert len(EvalBatchSampler(n, 64, 2, 0)) == len(EvalBatchSampler(n, 64, 2, 1))


def test_datamodule_shards_its_train_rows_across_ranks(make_tiny_datamodule):
    dm = make_tiny_datamodule(batch_size=8)
    dm.setup("fit")
    shards = rank_rows(lambda r: dm.make_train_sampler(num_replicas=2, rank=r))
    union = np.concatenate(shards)
    assert set(union.tolist()) == set(range(len(dm.train_set)))
    assert len(union) - len(np.unique(union)) == len(dm.train_set) % 2


@pytest.mark.slow
def test_ddp_cpu_trains_validates_tests_only_rank0_writes_and_ranks_agree_to_resume(
    tmp_path, tiny_dataset_dir
):
    """A 2-process sweep job next to the same run in one process; then, cut short, the job is resumed: rank 0
    resumes it from its last.ckpt, and the other ranks, which Lightning starts later with the same command
    line, read the same decision from the directory."""
    # threshold_from_val: every rank must tune its shift on all ranks' validation predictions (checked below)
    common = [
        "trainer.max_epochs=3",
        "data.bucketing=false",
        "callbacks.early_stopping=null",
        "model.threshold_from_val=true",
    ]
    single_dir, sweep, ddp_dir = tmp_path / "single", tmp_path / "sweep", tmp_path / "sweep" / "job"
    single = run_cli(
        "mmdigits.train", *train_args(tiny_dataset_dir, single_dir, *common, "data.batch_size=16")
    )
    assert single.returncode == 0, single.stderr[-3000:]
    in_a_sweep = [f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job"]
    ddp_args = ["-m", *train_args(tiny_dataset_dir, ddp_dir, *common, "trainer=ddp_cpu", "data.batch_size=8")]
    ddp_args += in_a_sweep
    ddp = run_cli("mmdigits.train", *ddp_args, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = read_metrics(single_dir), read_metrics(ddp_dir)

    # same number of optimiser steps (2 ranks x 8 rows = 16 rows per step), all stages ran
    assert b["global_step"] == a["global_step"] and b["epochs"] == 3
    for key in ("val/acc", "val/acc_best", "test/acc", "test/auroc"):
        assert np.isfinite(b[key]), key
    for key in ("test/acc", "test/auroc"):
        assert abs(a[key] - b[key]) <= DDP_TOLERANCE, (key, a[key], b[key])

    # the checkpoint DDP tested scores exactly the same in one process
    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={b['best_model_path']}",
            f"data.dir={tiny_dataset_dir}",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "eval",
    )
    again = evaluate(cfg)
    for key in ("test/acc", "test/f1", "test/auroc", "test/loss"):
        assert again[key] == pytest.approx(b[key], abs=1e-6), key

    # ...and its decision shift is the one the whole validation split gives, not one rank's half
    model = load_checkpoint_model(b["best_model_path"])
    # seed=7: the validation split train_args' runs used
    dm = MMDigitsDataModule(dir=str(tiny_dataset_dir), batch_size=16, bucketing=False, seed=7)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    with torch.no_grad():
        logits = torch.cat([model(batch) for batch in batches])
    stored = float(model.val_logit_shift)
    model._tune_threshold(logits, torch.cat([batch["target"] for batch in batches]).bool())
    assert float(model.val_logit_shift) == pytest.approx(stored, abs=1e-6)

    # only rank 0 wrote files: one metrics.json, one log, one .hydra, one tensorboard run
    files = sorted(str(p.relative_to(ddp_dir)) for p in ddp_dir.rglob("*") if p.is_file())
    assert not [f for f in files if "ddp_process" in f or "rank" in f], files
    assert [f for f in files if f.endswith(".log")] == ["train.log"]
    assert files.count("metrics.json") == 1
    assert sorted(p.name for p in (ddp_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    events = sorted((ddp_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len({p.parent for p in events}) == 1
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"val/acc", "test/acc", "val/logit_shift"} <= set(tags)
    ckpts = sorted(p.name for p in (ddp_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and all(p.endswith(".ckpt") for p in ckpts)

    (ddp_dir / "metrics.json").unlink()  # cut short after its last checkpoint, before the test stage
    again = run_cli("mmdigits.train", *ddp_args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep job job: partial, resuming" in again.stdout + again.stderr
    resumed = read_metrics(ddp_dir)
    assert (resumed["global_step"], resumed["epochs"]) == (b["global_step"], b["epochs"])
    assert resumed["test/acc"] == pytest.approx(b["test/acc"], abs=1e-6)
