"""Reliability: kill/resume, SIGTERM, determinism, atomic outputs, failing sweep jobs, memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdigits.data.build import BUILDING_MARKER, build_dataset, is_complete
from mmdigits.train import train
from mmdigits.utils.checkpoint_io import AtomicCheckpointIO
from mmdigits.utils.io import atomic_save_npy, atomic_savefig
from mmdigits.utils.run import write_json
from tests.hydra_utils import compose_cfg

REPO = Path(__file__).resolve().parents[1]
QUIET = [
    "~callbacks.rich_progress_bar",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


# ----------------------------------------------------------------------------- helpers (shared by test_*)
def cli_env(**extra: str) -> dict[str, str]:
    """Environment of CLI subprocesses: one thread each (2 busy cores: threads only fight), no full errors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    if "HYDRA_FULL_ERROR" not in extra:
        env.pop("HYDRA_FULL_ERROR", None)
    return env


def cli_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_cli(module: str, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    cmd = cli_cmd(module, *args)
    return subprocess.run(cmd, cwd=REPO, env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def train_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.dir={data_dir}",
        "data.batch_size=16",
        "data.eval_batch_size=64",
        "seed=7",
        "trainer.deterministic=true",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        *extra,
    ]


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The logged metrics (``stage/name``) of a metrics.json, without the learning rate and the throughput
    (pairs/s measures the machine, not the run)."""
    keep = lambda k: "/" in k and not k.startswith("lr-") and not k.endswith("pairs_per_s")  # noqa: E731
    return {k: v for k, v in metrics.items() if keep(k)}


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_same_metrics(a: dict, b: dict, tol: float = 1e-6) -> None:
    ma, mb = scalar_metrics(a), scalar_metrics(b)
    assert ma.keys() == mb.keys()
    assert any(k.startswith("test/") for k in ma) and any(k.startswith("val/") for k in ma)
    for k in ma:
        assert ma[k] == pytest.approx(mb[k], abs=tol), k


@pytest.fixture
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {path} appeared"
        assert time.monotonic() < end, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- 1. kill and resume
EPOCHS = 8  # an epoch of the tiny data takes a fraction of a second: leave plenty to replay


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reproduces_uninterrupted_run(tmp_path, tiny_dataset_dir):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    args = [f"trainer.max_epochs={EPOCHS}"]
    kw = {"cwd": REPO, "env": cli_env(), "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    reference = subprocess.Popen(
        cli_cmd("mmdigits.train", *train_args(tiny_dataset_dir, ref_dir, *args)), **kw
    )
    victim = subprocess.Popen(cli_cmd("mmdigits.train", *train_args(tiny_dataset_dir, run_dir, *args)), **kw)
    try:
        last = run_dir / "checkpoints" / "last.ckpt"
        wait_for(last, victim)  # end of epoch 0
        time.sleep(0.2)  # into the next epoch
        assert victim.poll() is None, "the run finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
    finally:
        victim.kill()
    killed_at = torch.load(last, weights_only=False)
    assert killed_at["epoch"] < EPOCHS - 1  # the resume has epochs to replay
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli("mmdigits.train", *train_args(tiny_dataset_dir, run_dir, *args, "ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()[-3000:]

    ref, res = read_metrics(ref_dir), read_metrics(run_dir)
    assert res["epochs"] == ref["epochs"] == EPOCHS
    assert res["global_step"] == ref["global_step"]
    assert_same_metrics(res, ref)
    assert_same_weights(run_dir / "checkpoints" / "last.ckpt", ref_dir / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_sigterm_saves_progress_and_exits_nonzero(tmp_path, tiny_dataset_dir):
    run_dir = tmp_path / "run"
    args = train_args(tiny_dataset_dir, run_dir, "trainer.max_epochs=50", "callbacks.early_stopping=null")
    proc = subprocess.Popen(
        cli_cmd("mmdigits.train", *args),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        wait_for(last, proc)
        at_epoch_end = torch.load(last, weights_only=False)["global_step"]
        time.sleep(3.0)  # into the next epoch (max_epochs=50: it cannot finish meanwhile)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err.decode()[-3000:]
    assert "interrupted by SIGTERM" in err.decode() and "ckpt_path=last" in err.decode()
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] > at_epoch_end  # mid-epoch progress was saved
    assert "interrupted at epoch" in (run_dir / "train.log").read_text()

    resumed = run_cli(
        "mmdigits.train",
        *train_args(tiny_dataset_dir, run_dir, f"trainer.max_epochs={ckpt['epoch'] + 2}", "ckpt_path=last"),
        "callbacks.early_stopping=null",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] > ckpt["global_step"]
    assert np.isfinite(metrics["test/acc"])


# ----------------------------------------------------------------------------- 2. determinism
def _train_in_process(run_dir: Path, data_dir: Path) -> dict:
    overrides = [
        f"data.dir={data_dir}",
        "data.batch_size=32",
        "data.eval_batch_size=64",
        "seed=11",
        "trainer.deterministic=true",
        "trainer.max_epochs=2",
        "logger=csv",
        *QUIET,
    ]
    return train(compose_cfg("train", overrides, run_dir))


def test_same_seed_gives_identical_metrics_and_weights(tmp_path, tiny_dataset_dir, one_thread):
    a = _train_in_process(tmp_path / "a", tiny_dataset_dir)
    b = _train_in_process(tmp_path / "b", tiny_dataset_dir)
    for k in scalar_metrics(a):
        assert a[k] == b[k], k  # bit-identical, not merely close
    assert_same_weights(
        tmp_path / "a" / "checkpoints" / "last.ckpt", tmp_path / "b" / "checkpoints" / "last.ckpt"
    )


# ----------------------------------------------------------------------------- 3. atomic outputs
class InjectedFailure(OSError):
    pass


def _fail_replace(monkeypatch: pytest.MonkeyPatch, after: int = 0) -> list[str]:
    """Make ``os.replace`` raise after ``after`` successful calls; returns the target names."""
    calls: list[str] = []
    real = os.replace

    def replace(src, dst, *a, **kw):
        calls.append(str(dst))
        if len(calls) > after:
            raise InjectedFailure(f"injected failure renaming onto {dst}")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp") or ".build-" in p.name]


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    before = path.read_bytes()
    _fail_replace(monkeypatch)
    with pytest.raises(InjectedFailure):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=False)["epoch"] == 0
    assert _no_temp_files(tmp_path)


def test_checkpoint_partial_write_never_reaches_final_name(tmp_path, monkeypatch):
    path = tmp_path / "new.ckpt"

    def write_half_then_fail(self: Path, data: bytes) -> int:
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise InjectedFailure("disk full")

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(InjectedFailure):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(10_000)}}, path)
    assert not path.exists() and _no_temp_files(tmp_path)


def test_metrics_json_write_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"test/acc": 0.5})
    _fail_replace(monkeypatch)
    with pytest.raises(InjectedFailure):
        write_json(path, {"test/acc": 0.9, "more": list(range(1000))})
    assert json.loads(path.read_text()) == {"test/acc": 0.5}
    assert _no_temp_files(tmp_path)


def test_result_npy_partial_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "result.npy"
    atomic_save_npy(path, np.zeros(10, bool))
    real_save = np.save

    def save_then_fail(fh, arr, **kw):
        real_save(fh, arr[: len(arr) // 2], **kw)
        raise InjectedFailure("killed mid-write")

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(InjectedFailure):
        atomic_save_npy(path, np.ones(15000, bool))
    assert np.array_equal(np.load(path), np.zeros(10, bool))
    assert _no_temp_files(tmp_path)


def test_figure_partial_write_keeps_previous_image(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "curves.png"
    fig = plt.figure()
    atomic_savefig(fig, path, dpi=50)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    class DiesMidSave:
        def savefig(self, fname, **kw):
            Path(fname).write_bytes(b"\x89PNG half an image")
            raise InjectedFailure("killed mid-write")

    with pytest.raises(InjectedFailure):
        atomic_savefig(DiesMidSave(), path, dpi=50)
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)
    plt.close(fig)


def _hashes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_dataset_build_write_failure_leaves_old_dataset_untouched(tmp_path, tiny_raw_dir, monkeypatch):
    out = build_dataset(tmp_path / "D", tiny_raw_dir, verify=False, n_train=60, n_test=30, seed=0)
    before = _hashes(out)
    import mmdigits.data.build as build

    real = build._save_npy
    calls = []

    def save_then_fail(path: Path, arr: np.ndarray) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            with open(path, "wb") as fh:
                fh.write(b"\x93NUMPY truncated")
            raise InjectedFailure("disk full")
        real(path, arr)

    monkeypatch.setattr(build, "_save_npy", save_then_fail)
    with pytest.raises(InjectedFailure):
        build_dataset(out, tiny_raw_dir, verify=False, n_train=80, n_test=30, seed=1, force=True)
    assert _hashes(out) == before and is_complete(out)
    assert _no_temp_files(tmp_path)


def test_dataset_build_failure_while_moving_files_in_is_flagged_incomplete(
    tmp_path, tiny_raw_dir, monkeypatch
):
    out = build_dataset(tmp_path / "D", tiny_raw_dir, verify=False, n_train=60, n_test=30, seed=0)
    old = {p.name: np.load(p, allow_pickle=True) for p in out.glob("*.npy")}
    _fail_replace(monkeypatch, after=3)
    with pytest.raises(InjectedFailure):
        build_dataset(out, tiny_raw_dir, verify=False, n_train=80, n_test=30, seed=1, force=True)
    monkeypatch.undo()
    # every file under its final name is complete (old or new), and the dir is marked as not complete
    for p in out.glob("*.npy"):
        arr = np.load(p, allow_pickle=True)
        assert len(arr) in (len(old[p.name]), 80, 30), p.name
    assert (out / BUILDING_MARKER).exists() and not is_complete(out, check_hashes=False)
    assert _no_temp_files(tmp_path)
    # the next use rebuilds it
    build_dataset(out, tiny_raw_dir, verify=False, n_train=80, n_test=30, seed=1, force=True)
    assert is_complete(out)


# ----------------------------------------------------------------------------- 4. sweeps
@pytest.mark.slow
def test_sweep_finishes_other_jobs_records_error_and_exits_nonzero(tmp_path, tiny_dataset_dir):
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        "model.optimizer.lr=0.003,-1,0.001",
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.sweep.dir={sweep_dir}",
        *[a for a in train_args(tiny_dataset_dir, tmp_path) if not a.startswith("hydra.run.dir")],
    ]
    proc = run_cli("mmdigits.train", *args, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1", "2"]
    ok, failed = [jobs[0], jobs[2]], jobs[1]
    for job in ok:
        assert np.isfinite(read_metrics(job)["test/acc"]) and not (job / "error.txt").exists()
    error = (failed / "error.txt").read_text()
    assert error.startswith("error: ValueError: Invalid learning rate: -1")
    assert "Traceback" in error and not (failed / "metrics.json").exists()
    assert "1 sweep job(s) failed" in proc.stderr and str(failed) in proc.stderr
    assert (sweep_dir / "failed_jobs" / "job_1.txt").exists()


def test_single_run_failure_writes_error_file_and_raises(tmp_path, tiny_dataset_dir):
    """Outside a sweep a failing run still fails (Hydra exits 1), leaving error.txt in its run dir."""
    from mmdigits.utils.cli import clean_errors

    overrides = [f"data.dir={tiny_dataset_dir}", "model.optimizer.lr=-1", "logger=csv", *QUIET]
    cfg = compose_cfg("train", overrides, tmp_path)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        clean_errors(train)(cfg)
    first_line = (tmp_path / "error.txt").read_text().splitlines()[0]
    assert first_line.startswith("error: ValueError: Invalid learning rate: -1")


# ----------------------------------------------------------------------------- 7. memory
def test_training_step_does_not_keep_autograd_graphs_alive(make_tiny_datamodule):
    """Metric states must hold detached tensors: a kept graph (the batch's activations) per step made peak
    RSS grow ~40 MB per step on the full dataset (6.5 GiB after one epoch of 45,000 pairs)."""
    from hydra.utils import instantiate

    model = instantiate(compose_cfg("train", [], None).model)
    dm = make_tiny_datamodule()
    dm.setup("fit")
    model.train()
    for _, batch in zip(range(2), dm.train_dataloader()):
        model._step(batch, "train").backward()
    for metric in model.train_metrics.values():
        for name in metric._defaults:
            values = getattr(metric, name)
            for t in values if isinstance(values, list) else [values]:
                base = t._base if t._base is not None else t
                assert t.grad_fn is None and not base.requires_grad, f"{type(metric).__name__}.{name}"
