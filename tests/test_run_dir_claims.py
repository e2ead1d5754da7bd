"""A run directory is claimed before anything is written into it.

* a refused run (the directory is locked, or holds another run) changes nothing in that directory: not
  Hydra's .hydra/ files, not the log, no error.txt;
* evaluate, predict and embed take the same lock and refuse a directory that holds another run;
* a sweep job whose directory holds a run of another config is refused, naming both configs' hashes;
* a lock that cannot be taken for another reason (no locks on a network filesystem) says so.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from mmdigits.errors import MMDigitsError
from mmdigits.train import train
from mmdigits.utils import rundir
from mmdigits.utils.rundir import RunDirLock
from tests.hydra_utils import compose_cfg
from tests.test_reliability import QUIET, run_cli

TINY = ["data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1", "logger=csv", *QUIET]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def live_run(directory: Path) -> Path:
    """A directory as a run leaves it: Hydra's files, its log, its metrics and checkpoints."""
    for name, text in {
        ".hydra/config.yaml": "seed: 1\n",
        ".hydra/hydra.yaml": "hydra: {runtime: {choices: {}}}\n",
        ".hydra/overrides.yaml": "- seed=1\n",
        "train.log": "the live run's log\n",
        "metrics.json": "{}",
        "checkpoints/last.ckpt": "weights",
        "run.json": json.dumps({"config_hash": "feedbeef"}),
    }.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def assert_refused_untouched(proc, directory: Path, before: dict[str, bytes], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(directory) in lines[0], proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(directory) == before, "the refused run changed the directory"


@pytest.mark.parametrize("held", [True, False], ids=["locked", "holds_a_run"])
def test_refused_train_changes_nothing_in_the_directory(held, tiny_dataset_dir, tmp_path):
    run = live_run(tmp_path / "run")
    args = [f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={run}", *TINY]
    if held:
        with RunDirLock(run) as lock:
            lock.announce()
            before = snapshot(run)
            proc = run_cli("mmdigits.train", *args)
        assert_refused_untouched(proc, run, before, "another run is writing")
    else:
        before = snapshot(run)
        assert_refused_untouched(run_cli("mmdigits.train", *args), run, before, "holds a run already")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dataset_dir) -> Path:
    run = tmp_path_factory.mktemp("trained")
    overrides = [f"data.dir={tiny_dataset_dir}", "+trainer.limit_train_batches=2", "test=false", *TINY]
    train(compose_cfg("train", overrides, run))
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("held", [True, False], ids=["locked", "holds_a_run"])
@pytest.mark.parametrize("command", ["mmdigits.evaluate", "mmdigits.predict", "mmdigits.embed"])
def test_evaluate_predict_embed_claim_their_directory_as_train_does(
    command, held, checkpoint, tiny_dataset_dir, tmp_path
):
    run = live_run(tmp_path / "run")
    args = [f"ckpt_path={checkpoint}", f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={run}"]
    if held:
        with RunDirLock(run) as lock:
            lock.announce()
            before = snapshot(run)
            proc = run_cli(command, *args)
        assert_refused_untouched(proc, run, before, "another run is writing")
    else:
        before = snapshot(run)
        assert_refused_untouched(
            run_cli(command, *args), run, before, "holds a run already", "overwrite=true"
        )


def test_sweep_job_of_another_config_is_refused_not_deleted(tiny_dataset_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", f"data.dir={tiny_dataset_dir}", f"hydra.sweep.dir={sweep}", "seed=0", *TINY]
    first = run_cli("mmdigits.train", *args, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]
    recorded = json.loads((job / "run.json").read_text())
    (job / "run.json").write_text(json.dumps({**recorded, "config_hash": "feedbeef" * 8}))
    before = snapshot(job)
    again = run_cli("mmdigits.train", *args, timeout=600)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "feedbeef" * 8 in again.stderr and recorded["config_hash"] in again.stderr, again.stderr[-3000:]
    assert snapshot(job) == before, "the refused sweep job changed (or deleted) the other run"


def test_a_lock_that_cannot_be_taken_says_why(tmp_path, monkeypatch):
    def no_locks(fh, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    with pytest.raises(MMDigitsError) as err, RunDirLock(tmp_path / "run"):
        pass
    message = str(err.value)
    assert os.strerror(errno.ENOLCK) in message and "another run is writing" not in message
