"""Failed jobs: ``error.txt`` in the run directory, and sweeps that finish the other jobs and exit non-zero.

Hydra's launchers stop a sweep at the first job that raises. In multirun mode the entry points instead
record the failure (``error.txt`` in the job's directory and a marker under ``<sweep dir>/failed_jobs/``)
and return NaN (Optuna counts it as a failed trial). :class:`ExitNonZeroOnFailedJobs`, a Hydra callback
registered in ``conf/train.yaml``, then makes the whole sweep exit with status 1.
"""

from __future__ import annotations

import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig

from mmdigits.errors import is_user_error
from mmdigits.utils.io import atomic_write_bytes

log = logging.getLogger("mmdigits.sweep")

ERROR_FILE = "error.txt"
FAILED_DIR = "failed_jobs"


def hydra_mode() -> RunMode | None:
    """RUN or MULTIRUN inside a Hydra app; None outside one."""
    try:
        return HydraConfig.get().mode
    except ValueError:
        return None


def run_dir() -> Path | None:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None


def error_line(err: BaseException) -> str:
    """``error: <message>`` (the type name is added for non-user errors, whose message may be terse)."""
    return f"error: {err}" if is_user_error(err) else f"error: {type(err).__name__}: {err}"


def write_error_file(err: BaseException, directory: Path | None = None) -> Path | None:
    """Write ``error.txt`` (the one-line message, then the traceback) into the run directory."""
    directory = directory or run_dir()
    if directory is None:
        return None
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    path = directory / ERROR_FILE
    try:
        atomic_write_bytes(path, f"{error_line(err)}\n\n{tb}".encode())
    except OSError as write_err:  # never hide the real error behind a secondary one
        log.warning("could not write %s: %s", path, write_err)
        return None
    return path


def record_failed_job(err: BaseException) -> float:
    """Multirun: log the failure, mark it in the sweep dir, return NaN so the sweep goes on."""
    hc = HydraConfig.get()
    line = error_line(err)
    overrides = " ".join(hc.overrides.task)
    log.error("job %s (%s) failed: %s", hc.job.num, overrides, line)
    print(f"job {hc.job.num} ({overrides}) failed: {line}", file=sys.stderr, flush=True)
    marker = Path(hc.sweep.dir) / FAILED_DIR / f"job_{hc.job.num}.txt"
    atomic_write_bytes(marker, f"{hc.runtime.output_dir}\n{overrides}\n{line}\n".encode())
    return float("nan")


def failed_jobs(sweep_dir: str | Path) -> list[Path]:
    return sorted((Path(sweep_dir) / FAILED_DIR).glob("job_*.txt"))


class ExitNonZeroOnFailedJobs(HydraCallback):
    """After a sweep, exit with status 1 (listing the failed jobs) when any job recorded a failure."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / FAILED_DIR, ignore_errors=True)  # a reused sweep dir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_jobs(config.hydra.sweep.dir)
        if not failed:
            return
        records = [p.read_text().splitlines() for p in failed]
        summary = "; ".join(f"{r[0]}: {r[-1]}" for r in records)
        msg = f"error: {len(failed)} sweep job(s) failed (see error.txt in each): {summary}"
        log.error(msg)
        print(msg, file=sys.stderr, flush=True)
        raise SystemExit(1)
