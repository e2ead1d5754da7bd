"""A run directory belongs to one run; sweeps resume and scale out on Hydra's launchers.

* runs started in the same second get their own directories, and a second writer to a directory is refused;
* a new run in a directory that holds another run is refused (ckpt_path=last resumes, overwrite=true starts
  over and leaves no stale checkpoint behind);
* a sweep killed part-way, run again in the same sweep directory, skips the finished jobs and completes;
* sweeps run through the joblib and submitit (local) launchers.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmdigits.errors import MMDigitsError
from mmdigits.train import train
from mmdigits.utils.rundir import RunDirLock
from tests.hydra_utils import compose_cfg
from tests.test_reliability import QUIET, cli_cmd, cli_env, run_cli

TINY = ["data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1", "logger=csv", *QUIET]


def test_second_writer_to_a_run_directory_is_refused(tiny_dataset_dir, tmp_path):
    run = tmp_path / "run"
    with RunDirLock(run) as lock:
        lock.announce()
        proc = run_cli("mmdigits.train", f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={run}", *TINY)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {run}: another run is writing to this run directory (pid {os.getpid()})" in proc.stderr
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_directories(tiny_dataset_dir, tmp_path):
    env = cli_env(MMDIGITS_LOG_DIR=str(tmp_path / "logs"))
    args = cli_cmd("mmdigits.train", f"data.dir={tiny_dataset_dir}", *TINY)
    procs = [
        subprocess.Popen(args, cwd=Path(__file__).parents[1], env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)
    best = [json.loads((r / "metrics.json").read_text())["best_model_path"] for r in runs]
    assert all(Path(b).is_relative_to(r) for b, r in zip(best, runs))  # each run's own checkpoint


def test_rerun_in_a_run_directory_is_refused_unless_resumed_or_overwritten(tiny_dataset_dir, tmp_path):
    run = tmp_path / "run"
    overrides = [f"data.dir={tiny_dataset_dir}", *TINY]
    first = train(compose_cfg("train", overrides, run))
    with pytest.raises(
        MMDigitsError, match=r"holds a run already \(checkpoints, metrics.json.*ckpt_path=last"
    ):
        train(compose_cfg("train", overrides, run))
    assert json.loads((run / "metrics.json").read_text())["test/acc"] == first["test/acc"]  # untouched
    resumed = train(compose_cfg("train", [*overrides, "ckpt_path=last"], run))
    assert resumed["epochs"] == first["epochs"]
    stale = run / "checkpoints" / "epoch_099.ckpt"
    stale.write_bytes(b"an old run's checkpoint")
    train(compose_cfg("train", [*overrides, "overwrite=true"], run))
    assert not stale.exists() and (run / "metrics.json").is_file()


def _sweep_args(data_dir: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return ["-m", f"data.dir={data_dir}", f"hydra.sweep.dir={sweep_dir}", "seed=0,1,2,3", *TINY, *extra]


@pytest.mark.slow
def test_sweep_killed_after_two_jobs_resumes_and_completes(tiny_dataset_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = cli_cmd("mmdigits.train", *_sweep_args(tiny_dataset_dir, sweep, "trainer.max_epochs=3"))
    proc = subprocess.Popen(args, cwd=Path(__file__).parents[1], env=cli_env(), start_new_session=True)
    deadline = time.time() + 300
    while len(list(sweep.glob("*/metrics.json"))) < 2:
        assert proc.poll() is None and time.time() < deadline, "the sweep ended or stalled before 2 jobs"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.read_bytes() for p in sweep.glob("*/metrics.json")}
    assert 2 <= len(done) < 4
    again = run_cli(
        "mmdigits.train", *_sweep_args(tiny_dataset_dir, sweep, "trainer.max_epochs=3"), timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 4 and all((j / "metrics.json").is_file() for j in jobs)
    for name, content in done.items():  # finished jobs were skipped, not rerun
        assert (sweep / name / "metrics.json").read_bytes() == content
        assert f"sweep job {name}: done, skipping" in again.stdout + again.stderr
    assert (
        len(done) + sum(f"sweep job {j.name}: partial, resuming" in again.stdout + again.stderr for j in jobs)
        <= 4
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_sweep_through_a_launcher(launcher, tiny_dataset_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", f"data.dir={tiny_dataset_dir}", f"hydra.sweep.dir={sweep}", "seed=0,1", *TINY]
    proc = run_cli("mmdigits.train", *args, f"hydra/launcher={launcher}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(metrics) == 2 and all(0 <= m["test/acc"] <= 1 for m in metrics)


def test_resume_with_a_larger_budget_is_refused_clearly(tiny_dataset_dir, tmp_path, caplog):
    """The one-cycle schedule spans exactly the budget a run started with: resuming it for more epochs
    must say so, not fail deep inside the LR scheduler; resuming for fewer warns that it will not finish."""
    run = tmp_path / "run"
    overrides = [f"data.dir={tiny_dataset_dir}", *TINY, "trainer.max_epochs=2"]
    train(compose_cfg("train", overrides, run))
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    refused = r"last.ckpt: its run was started with trainer.max_epochs=2.*resume with trainer.max_epochs=2"
    with pytest.raises(MMDigitsError, match=refused):
        train(compose_cfg("train", [*overrides, "ckpt_path=last", "trainer.max_epochs=3"], run))
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    with caplog.at_level(logging.WARNING, logger="mmdigits.models.schedule"):
        train(compose_cfg("train", [*overrides, "ckpt_path=last", "trainer.max_epochs=1"], run))
    assert "started with trainer.max_epochs=2 for 1 epochs: its learning-rate schedule" in caplog.text
