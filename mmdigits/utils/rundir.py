"""A run directory belongs to one run: a lock while it is written, no silent reuse, sweep jobs that resume.

* ``claimed``: lock and claim the directory before anything is written into it. Hydra is told not to write
  there first (``hydra.output_subdir: null``, a log file opened on its first record); ``.hydra/`` is written
  once the claim holds. A refused run changes nothing in the directory it was refused.
* ``RunDirLock``: an exclusive ``flock`` on ``<run dir>/.lock`` for as long as the run writes there; a second
  process gets a clear error instead of mixing its checkpoints and metrics into the first one's.
* ``run_state``: what a directory already holds. A new run refuses a directory that holds another run's
  checkpoints or metrics (``ckpt_path=last`` resumes it, ``overwrite=true`` starts over there).
* Sweep jobs (``-m``) rerun in the same sweep directory are skipped when they finished with the same config
  (``run.json`` records its hash) and resume from ``checkpoints/last.ckpt`` when they were cut short; a job
  directory holding a run of another config is refused (``overwrite=true`` starts over there). Every DDP rank
  reads the same decision from the directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mmdigits.errors import MMDigitsError
from mmdigits.utils.io import atomic_write_bytes, atomic_write_json
from mmdigits.utils.sweep import hydra_mode

LOCK_FILE = ".lock"
log = logging.getLogger("mmdigits.train")

RUN_FILE = "run.json"
HYDRA_FILES = (".hydra", LOCK_FILE)
T = TypeVar("T")
# what a run that got going leaves (Hydra's own .hydra/ and the log are rewritten by every start)
RUN_OUTPUTS = ("checkpoints", "metrics.json", "tensorboard", "csv")
# settings that do not change what a run computes
NOT_IN_HASH = ("hydra", "paths", "ckpt_path", "overwrite", "trust_checkpoint", "tags", "print_config")


class RunDirRefused(MMDigitsError):
    """This run may not write to the directory; nothing was written there."""


class RunDirLock:
    """Exclusive lock on a run directory (released when the process ends, however it ends). ``announce``
    writes this process's id into the lock file once the run has claimed the directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._fh: Any = None
        self._created = False

    def __enter__(self) -> RunDirLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._created = not (self.dir / LOCK_FILE).exists()
        self._fh = open(self.dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            self._forget()
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirRefused(
                    f"{self.dir}: another run is writing to this run directory ({holder}); wait for it, or "
                    "start this run in its own directory (leave hydra.run.dir out)"
                ) from None
            raise RunDirRefused(
                f"{self.dir}: cannot lock this run directory: {os.strerror(err.errno or 0)} "
                f"({errno.errorcode.get(err.errno or 0, err.errno)}); a filesystem without file locks (some "
                "network filesystems)? Start the run on a local disk (paths.log_dir)"
            ) from None
        return self

    def announce(self) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}\n")
        self._fh.flush()
        self._created = False

    def _forget(self) -> None:
        if self._created:  # a refused run leaves no lock file behind in a directory it found without one
            (self.dir / LOCK_FILE).unlink(missing_ok=True)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        if exc_type is not None and issubclass(exc_type, RunDirRefused):
            self._forget()


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config, without paths and switches that do not change what a run computes."""
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_IN_HASH}
    data.get("callbacks", {}).pop("model_checkpoint", None)  # holds the run directory's path
    # holds a search's trial number, and a trial queued again to resume its run gets a new one
    data.get("callbacks", {}).pop("optuna_pruning", None)
    # where the raw corpora are read from: the build checks each raw file's sha256 wherever it lies
    if isinstance(data.get("data"), dict):
        data["data"].pop("raw_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def run_outputs(directory: Path) -> list[str]:
    """The outputs of an earlier run that ``directory`` holds (empty for a fresh directory)."""
    return [name for name in RUN_OUTPUTS if (directory / name).exists() and any_file(directory / name)]


def any_file(path: Path) -> bool:
    return path.is_file() or any(p.is_file() for p in path.rglob("*"))


def run_state(directory: Path, cfg_hash: str) -> str:
    """``new`` (nothing there), ``done`` (finished with this config), ``partial`` (started with this config,
    with a last.ckpt to resume from), ``started`` (this config, stopped before its first last.ckpt: nothing
    to resume) or ``other`` (outputs of another config)."""
    if not run_outputs(directory):
        return "new"
    if recorded_hash(directory) != cfg_hash:
        return "other"
    if (directory / "metrics.json").is_file():
        return "done"
    return "partial" if (directory / "checkpoints" / "last.ckpt").is_file() else "started"


def read_run_file(directory: Path) -> dict[str, Any]:
    """What ``run.json`` records: the config hash and the data settings ({} when absent or unreadable)."""
    try:
        recorded = json.loads((directory / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def recorded_hash(directory: Path) -> str | None:
    """The config hash that ``run.json`` records (None when absent or unreadable)."""
    return read_run_file(directory).get("config_hash")


def clear_run(directory: Path) -> None:
    """Remove an earlier run's outputs (not Hydra's .hydra/ and log, which the new run rewrites)."""
    for name in (*RUN_OUTPUTS, RUN_FILE, "error.txt"):
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def record_start(directory: Path, cfg_hash: str, data: Any = None) -> None:
    """``run.json``: the config's hash (what a sweep rerun compares) and the resolved data settings (what
    readers of the run use as plain data, e.g. the report's confusion matrix)."""
    atomic_write_json(directory / RUN_FILE, {"config_hash": cfg_hash, "data": data})


def resume_decision(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint this run starts from: ``cfg.ckpt_path``, or ``last`` for a sweep job that was cut short.
    Read from the directory alone, so every DDP rank reaches the decision that rank 0 reached."""
    ckpt_path = cfg.get("ckpt_path")
    if (
        hydra_mode() == RunMode.MULTIRUN
        and not ckpt_path
        and run_state(output_dir, config_hash(cfg)) == "partial"
    ):
        return "last"
    return ckpt_path


def claim_run_dir(cfg: DictConfig, output_dir: Path) -> str | None:
    """What to do with what the run directory already holds: the checkpoint to resume from, or ``done``.

    A sweep job rerun in its sweep directory is skipped when it finished with the same config and resumes
    from its last.ckpt when it was cut short. Anywhere else, another run's outputs are refused unless
    ``ckpt_path=last`` (resume) or ``overwrite=true`` (start over) says what to do."""
    h = config_hash(cfg)
    ckpt_path = cfg.get("ckpt_path")
    state = run_state(output_dir, h) if not ckpt_path else "resume"
    if hydra_mode() == RunMode.MULTIRUN and state in ("done", "partial"):
        log.info(
            "sweep job %s: %s, %s", output_dir.name, state, "skipping" if state == "done" else "resuming"
        )
        return "done" if state == "done" else resume_decision(cfg, output_dir)
    if hydra_mode() == RunMode.MULTIRUN and state == "started":  # this job's config: nothing to lose
        log.info("sweep job %s: stopped before its first checkpoint, starting over", output_dir.name)
        clear_run(output_dir)
    if not ckpt_path and run_outputs(output_dir):
        if not cfg.get("overwrite", False):
            recorded = recorded_hash(output_dir)
            other = (
                f"; another config's: hash {recorded}, this run's {h}" if recorded and recorded != h else ""
            )
            raise RunDirRefused(
                f"{output_dir}: holds a run already ({', '.join(run_outputs(output_dir))}{other}); resume it "
                "with ckpt_path=last, start a new run (leave "
                "hydra.run.dir/hydra.sweep.dir out), or pass overwrite=true to start over here"
            )
        log.warning("overwrite=true: removing the earlier run's outputs in %s", output_dir)
        clear_run(output_dir)
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    record_start(output_dir, h, data)
    return ckpt_path


def claim_output_dir(cfg: DictConfig, output_dir: Path) -> None:
    """evaluate, predict, embed: a directory that holds another run's files is refused unless
    ``overwrite=true``."""
    held = sorted(p.name for p in output_dir.iterdir() if p.name not in HYDRA_FILES and p.suffix != ".log")
    if held and not cfg.get("overwrite", False):
        raise RunDirRefused(
            f"{output_dir}: holds a run already ({', '.join(held[:4])}); leave hydra.run.dir out for a new "
            "directory, or pass overwrite=true to write here anyway"
        )


def write_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """``.hydra/{config,hydra,overrides}.yaml``, as Hydra would have written them before the run started."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed outside a Hydra app: nothing to record
        return
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    out = output_dir / ".hydra"
    files = {
        "config.yaml": job_cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, node in files.items():
        atomic_write_bytes(out / name, OmegaConf.to_yaml(node).encode())


@contextmanager
def claimed(cfg: DictConfig, claim: Callable[[DictConfig, Path], T]) -> Iterator[T]:
    """Lock the run directory and claim it (``claim`` decides, or refuses with RunDirRefused) before
    anything is written there; then record this process in the lock and Hydra's files in ``.hydra/``."""
    output_dir = Path(cfg.paths.output_dir)
    with RunDirLock(output_dir) as lock:
        decision = claim(cfg, output_dir)
        lock.announce()
        write_hydra_files(cfg, output_dir)
        yield decision
