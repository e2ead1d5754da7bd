"""mmdigits.utils.rundir without training: the lock, the config hash, what a directory holds, and the claim
decisions of train (new, refused, overwrite, resume, sweep jobs) and of evaluate/predict/embed."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from mmdigits.utils import rundir
from mmdigits.utils.rundir import RunDirLock, RunDirRefused


def cfg(out: Path, **kwargs):
    base = {
        "paths": {"output_dir": str(out)},
        "data": {"task": "match", "dir": "x"},
        "model": {"lr": 0.1},
        "ckpt_path": None,
        "overwrite": False,
    }
    return OmegaConf.create({**base, **kwargs})


def finished(directory: Path, cfg_hash: str, metrics: bool = True, last: bool = False) -> None:
    (directory / "checkpoints").mkdir(parents=True, exist_ok=True)
    (directory / "checkpoints" / ("last.ckpt" if last else "epoch_000.ckpt")).write_bytes(b"x")
    if metrics:
        (directory / "metrics.json").write_text("{}")
    rundir.record_start(directory, cfg_hash)


@pytest.fixture
def multirun(monkeypatch):
    monkeypatch.setattr(rundir, "hydra_mode", lambda: RunMode.MULTIRUN)


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    d = tmp_path / "run"
    with RunDirLock(d) as first:
        assert (d / ".lock").exists()
        with pytest.raises(
            RunDirRefused, match=r"another run is writing to this run directory \(another process\)"
        ):
            RunDirLock(d).__enter__()
        first.announce()
        assert (d / ".lock").read_text() == f"pid {os.getpid()}\n"
        with pytest.raises(RunDirRefused, match=rf"run: another run .*\(pid {os.getpid()}\); wait for it"):
            RunDirLock(d).__enter__()
        assert (d / ".lock").read_text() == f"pid {os.getpid()}\n"
    with RunDirLock(d):  # released
        pass


def test_a_refused_claim_leaves_no_lock_file_it_created(tmp_path):
    with pytest.raises(RunDirRefused), RunDirLock(tmp_path / "a"):
        raise RunDirRefused("no")
    assert list((tmp_path / "a").iterdir()) == []
    with pytest.raises(ValueError), RunDirLock(tmp_path / "b"):
        raise ValueError("other failures keep it")
    assert (tmp_path / "b" / ".lock").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".lock").write_text("")
    with pytest.raises(RunDirRefused), RunDirLock(tmp_path / "c"):
        raise RunDirRefused("no")
    assert (tmp_path / "c" / ".lock").exists()  # it was there before
    with pytest.raises(RunDirRefused), RunDirLock(tmp_path / "d") as lock:
        lock.announce()
        raise RunDirRefused("claimed first")
    assert (tmp_path / "d" / ".lock").exists()


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EACCES])
def test_busy_codes_mean_another_run(tmp_path, monkeypatch, code):
    def busy(fh, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rundir.fcntl, "flock", busy)
    with pytest.raises(RunDirRefused, match="another run is writing"):
        RunDirLock(tmp_path / "r").__enter__()
    assert not (tmp_path / "r" / ".lock").exists()


def test_a_filesystem_without_locks_is_named(tmp_path, monkeypatch):
    def nolock(fh, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "flock", nolock)
    with pytest.raises(RunDirRefused, match=r"cannot lock this run directory: .* \(ENOLCK\); a filesystem"):
        RunDirLock(tmp_path / "r").__enter__()


def test_the_config_hash_leaves_out_what_does_not_change_the_run(tmp_path):
    base = cfg(tmp_path / "a")
    h = rundir.config_hash(base)
    assert len(h) == 64 and int(h, 16) >= 0
    same = cfg(tmp_path / "b", ckpt_path="last", overwrite=True, tags=["x"], print_config=True)
    same.callbacks = {"model_checkpoint": {"dirpath": str(tmp_path)}}
    assert rundir.config_hash(same) == rundir.config_hash(cfg(tmp_path / "c", callbacks={}))
    assert rundir.config_hash(cfg(tmp_path / "b", ckpt_path="last")) == h
    assert rundir.config_hash(cfg(tmp_path / "a", model={"lr": 0.2})) != h
    with_cb = cfg(tmp_path / "a", callbacks={"ema": {"decay": 0.9}, "model_checkpoint": {"d": 1}})
    assert rundir.config_hash(with_cb) != rundir.config_hash(
        cfg(tmp_path / "a", callbacks={"ema": {"decay": 0.8}})
    )


def test_where_the_raw_corpora_are_read_from_is_not_part_of_the_config_hash(tmp_path):
    """The build checks every raw file's checksum, so the folder they are read from (MMDIGITS_RAW_DIR, or
    none) changes nothing a run computes: a sweep resumes, and an expert is reused, from either shell."""
    from tests.hydra_utils import compose_cfg

    hashes = {
        rundir.config_hash(compose_cfg("train", [f"paths.raw_dir={raw}", "data.dir=built"], tmp_path))
        for raw in ("null", "/corpora", "elsewhere/raw")
    }
    assert len(hashes) == 1
    other = compose_cfg("train", ["paths.raw_dir=/corpora", "data.dir=other"], tmp_path)
    assert rundir.config_hash(other) not in hashes  # the build itself still counts


def test_what_a_directory_holds(tmp_path):
    assert rundir.run_outputs(tmp_path) == []
    (tmp_path / "tensorboard" / "v0").mkdir(parents=True)
    (tmp_path / "csv").mkdir()
    assert rundir.run_outputs(tmp_path) == []  # empty folders are no outputs
    (tmp_path / "tensorboard" / "v0" / "events").write_text("e")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "a.ckpt").write_text("c")
    assert rundir.run_outputs(tmp_path) == ["checkpoints", "metrics.json", "tensorboard"]


def test_run_states(tmp_path):
    h = "h1"
    assert rundir.run_state(tmp_path / "none", h) == "new"
    done, partial, broken, other = (tmp_path / n for n in ("done", "partial", "broken", "other"))
    finished(done, h)
    finished(partial, h, metrics=False, last=True)
    finished(broken, h, metrics=False)
    finished(other, "h2")
    assert [rundir.run_state(d, h) for d in (done, partial, broken, other)] == [
        "done",
        "partial",
        "started",  # this config, killed before its first last.ckpt: nothing to resume
        "other",
    ]


def killed_before_first_checkpoint(out: Path):
    """A run directory of ``cfg(out)`` that holds only the logger's first file: its config."""
    c = cfg(out)
    (out / "csv").mkdir(parents=True)
    rundir.record_start(out, rundir.config_hash(c))
    (out / "csv" / "metrics.csv").write_text("epoch\n")
    return c


def test_a_sweep_job_killed_before_its_first_checkpoint_starts_over(tmp_path, multirun):
    """Its rerun in the sweep directory trains afresh (the partial outputs go) instead of refusing."""
    out = tmp_path / "job"
    c = killed_before_first_checkpoint(out)
    assert rundir.claim_run_dir(c, out) is None
    assert not (out / "csv").exists() and rundir.recorded_hash(out) == rundir.config_hash(c)


def test_a_single_run_killed_before_its_first_checkpoint_is_still_refused(tmp_path):
    out = tmp_path / "run"
    c = killed_before_first_checkpoint(out)
    with pytest.raises(rundir.RunDirRefused, match="holds a run already"):
        rundir.claim_run_dir(c, out)


def test_recorded_hash(tmp_path):
    assert rundir.recorded_hash(tmp_path) is None
    (tmp_path / "run.json").write_text("{not json")
    assert rundir.recorded_hash(tmp_path) is None
    (tmp_path / "run.json").write_text("[1]")
    assert rundir.recorded_hash(tmp_path) is None
    rundir.record_start(tmp_path, "abc", {"task": "digit"})
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "config_hash": "abc",
        "data": {"task": "digit"},
    }
    assert rundir.recorded_hash(tmp_path) == "abc"


def test_clearing_a_run_keeps_hydra_files_and_the_log(tmp_path):
    finished(tmp_path, "h")
    (tmp_path / "csv").mkdir()
    (tmp_path / "error.txt").write_text("e")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "train.log").write_text("l")
    rundir.clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "train.log"]


def test_a_new_directory_is_claimed_and_recorded(tmp_path):
    c = cfg(tmp_path)
    assert rundir.claim_run_dir(c, tmp_path) is None
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded == {"config_hash": rundir.config_hash(c), "data": {"task": "match", "dir": "x"}}
    no_data = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "n")}, "ckpt_path": None})
    (tmp_path / "n").mkdir()
    rundir.claim_run_dir(no_data, tmp_path / "n")
    assert json.loads((tmp_path / "n" / "run.json").read_text())["data"] is None


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    c = cfg(tmp_path)
    finished(tmp_path, rundir.config_hash(c))
    with pytest.raises(RunDirRefused, match=r"holds a run already \(checkpoints, metrics.json\); resume it"):
        rundir.claim_run_dir(c, tmp_path)
    other = cfg(tmp_path, model={"lr": 0.5})
    with pytest.raises(RunDirRefused, match=rf"another config's: hash {rundir.config_hash(c)}, this run's"):
        rundir.claim_run_dir(other, tmp_path)
    assert rundir.claim_run_dir(cfg(tmp_path, ckpt_path="last"), tmp_path) == "last"
    assert (tmp_path / "metrics.json").exists()
    assert rundir.claim_run_dir(cfg(tmp_path, overwrite=True), tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_outside_a_sweep_a_finished_run_is_not_skipped(tmp_path):
    c = cfg(tmp_path)
    assert rundir.resume_decision(c, tmp_path) is None
    finished(tmp_path, rundir.config_hash(c), metrics=False, last=True)
    assert rundir.resume_decision(c, tmp_path) is None
    assert rundir.resume_decision(cfg(tmp_path, ckpt_path="x.ckpt"), tmp_path) == "x.ckpt"


def test_sweep_jobs_skip_when_done_and_resume_when_cut_short(tmp_path, multirun):
    c = cfg(tmp_path)
    done, partial, other = tmp_path / "0", tmp_path / "1", tmp_path / "2"
    finished(done, rundir.config_hash(c))
    finished(partial, rundir.config_hash(c), metrics=False, last=True)
    finished(other, "another")
    assert rundir.claim_run_dir(c, done) == "done"
    assert rundir.claim_run_dir(c, partial) == "last"
    assert rundir.resume_decision(c, partial) == "last"
    assert rundir.resume_decision(c, done) is None
    assert rundir.resume_decision(cfg(tmp_path, ckpt_path="p.ckpt"), partial) == "p.ckpt"
    with pytest.raises(RunDirRefused, match="another config's: hash another"):
        rundir.claim_run_dir(c, other)
    assert rundir.claim_run_dir(cfg(tmp_path, ckpt_path="given.ckpt"), done) == "given.ckpt"


def test_output_directories_of_evaluate_predict_embed(tmp_path):
    c = cfg(tmp_path)
    for name in (".hydra", ".lock", "evaluate.log"):
        (tmp_path / name).write_text("")
    rundir.claim_output_dir(c, tmp_path)
    for name in ("a.npy", "b.json", "c", "d", "e"):
        (tmp_path / name).write_text("")
    with pytest.raises(
        RunDirRefused, match=r"holds a run already \(a.npy, b.json, c, d\); leave hydra.run.dir"
    ):
        rundir.claim_output_dir(c, tmp_path)
    rundir.claim_output_dir(cfg(tmp_path, overwrite=True), tmp_path)


def test_claimed_locks_claims_announces_and_yields_the_decision(tmp_path, monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # outside a Hydra app, whatever ran before
    c = cfg(tmp_path / "run")
    with rundir.claimed(c, lambda cfg_, d: f"decided {d.name}") as decision:
        assert decision == "decided run"
        assert (tmp_path / "run" / ".lock").read_text() == f"pid {os.getpid()}\n"
        assert not (tmp_path / "run" / ".hydra").exists()  # composed outside a Hydra app


def test_the_config_hash_is_of_the_resolved_config_in_any_key_order(tmp_path):
    """An interpolated setting counts with its value (here from paths, itself left out of the hash); the
    order of keys does not count, and values json cannot write (a Path) are hashed as text."""
    a = cfg(tmp_path, model={"lr": "${paths.lr}"}, paths={"output_dir": str(tmp_path), "lr": 0.1})
    b = cfg(tmp_path, model={"lr": "${paths.lr}"}, paths={"output_dir": str(tmp_path), "lr": 0.2})
    assert rundir.config_hash(a) != rundir.config_hash(b)
    assert rundir.config_hash(a) == rundir.config_hash(cfg(tmp_path, model={"lr": 0.1}))
    swapped = OmegaConf.create({"model": {"lr": 0.1}, "data": {"dir": "x", "task": "match"}})
    assert rundir.config_hash(swapped) == rundir.config_hash(
        OmegaConf.create({"data": {"task": "match", "dir": "x"}, "model": {"lr": 0.1}})
    )
    as_path = OmegaConf.create({"data": {"dir": Path("x")}})
    assert rundir.config_hash(as_path) == rundir.config_hash(OmegaConf.create({"data": {"dir": "x"}}))


def test_run_json_records_the_resolved_data_settings(tmp_path):
    c = cfg(tmp_path, data={"task": "match", "dir": "${paths.output_dir}/data"})
    rundir.claim_run_dir(c, tmp_path)
    assert rundir.read_run_file(tmp_path)["data"] == {"task": "match", "dir": f"{tmp_path}/data"}


def test_refusals_say_what_to_do(tmp_path):
    c = cfg(tmp_path)
    finished(tmp_path, rundir.config_hash(c))
    with pytest.raises(RunDirRefused) as refused:
        rundir.claim_run_dir(c, tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}: holds a run already (checkpoints, metrics.json); resume it with ckpt_path=last, start "
        "a new run (leave hydra.run.dir/hydra.sweep.dir out), or pass overwrite=true to start over here"
    )
    with pytest.raises(RunDirRefused) as refused:
        rundir.claim_output_dir(c, tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}: holds a run already (checkpoints, metrics.json, run.json); leave hydra.run.dir out for "
        "a new directory, or pass overwrite=true to write here anyway"
    )
    with RunDirLock(tmp_path), pytest.raises(RunDirRefused) as refused:
        RunDirLock(tmp_path).__enter__()
    assert str(refused.value) == (
        f"{tmp_path}: another run is writing to this run directory (another process); wait for it, or start "
        "this run in its own directory (leave hydra.run.dir out)"
    )


def test_a_config_without_overwrite_does_not_overwrite(tmp_path):
    bare = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "model": {"lr": 0.1}})
    finished(tmp_path, rundir.config_hash(bare))
    with pytest.raises(RunDirRefused, match="holds a run already"):
        rundir.claim_run_dir(bare, tmp_path)
    with pytest.raises(RunDirRefused, match="holds a run already"):
        rundir.claim_output_dir(bare, tmp_path)


def test_sweep_jobs_and_overwrites_are_logged(tmp_path, multirun, caplog):
    c = cfg(tmp_path)
    done, partial = tmp_path / "0", tmp_path / "1"
    finished(done, rundir.config_hash(c))
    finished(partial, rundir.config_hash(c), metrics=False, last=True)
    with caplog.at_level("INFO", logger="mmdigits.train"):
        rundir.claim_run_dir(c, done)
        rundir.claim_run_dir(c, partial)
        rundir.claim_run_dir(cfg(tmp_path, overwrite=True, model={"lr": 0.3}), done)
    assert caplog.messages == [
        "sweep job 0: done, skipping",
        "sweep job 1: partial, resuming",
        f"overwrite=true: removing the earlier run's outputs in {done}",
    ]


def test_a_lock_that_cannot_be_taken_names_the_error(tmp_path, monkeypatch):
    def unknown(fh, op):
        raise OSError(9999, "an error no table knows")

    monkeypatch.setattr(rundir.fcntl, "flock", unknown)
    with pytest.raises(RunDirRefused) as refused:
        RunDirLock(tmp_path / "r").__enter__()
    assert str(refused.value) == (
        f"{tmp_path / 'r'}: cannot lock this run directory: {os.strerror(9999)} (9999); a filesystem "
        "without file locks (some network filesystems)? Start the run on a local disk (paths.log_dir)"
    )

    def bare(fh, op):
        raise OSError("no error number")

    monkeypatch.setattr(rundir.fcntl, "flock", bare)
    with pytest.raises(RunDirRefused, match="cannot lock this run directory") as refused:
        RunDirLock(tmp_path / "r").__enter__()
    assert "EPERM" not in str(refused.value) and os.strerror(errno.EPERM) not in str(refused.value)


def test_the_lock_makes_missing_parents_and_survives_a_lock_file_already_gone(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    with RunDirLock(deep):
        assert (deep / ".lock").exists()
    with pytest.raises(RunDirRefused, match="refused"), RunDirLock(tmp_path / "gone"):
        (tmp_path / "gone" / ".lock").unlink()
        raise RunDirRefused("refused")


def test_hydra_files_are_written_as_hydra_would(tmp_path, monkeypatch):
    hydra = {"overrides": {"task": ["model.lr=0.2"]}, "job": {"name": "train"}}
    monkeypatch.setattr(HydraConfig.instance(), "cfg", OmegaConf.create({"hydra": hydra}))
    c = cfg(tmp_path, hydra=hydra)
    rundir.write_hydra_files(c, tmp_path)
    assert sorted(p.name for p in (tmp_path / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    read = {p.stem: OmegaConf.load(p) for p in (tmp_path / ".hydra").iterdir()}
    assert read["config"] == OmegaConf.masked_copy(c, ["paths", "data", "model", "ckpt_path", "overwrite"])
    assert "hydra" not in read["config"]
    assert read["hydra"] == OmegaConf.create({"hydra": hydra})
    assert list(read["overrides"]) == ["model.lr=0.2"]
