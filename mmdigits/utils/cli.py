"""Shared plumbing for the Hydra entry points: clean one-line errors, error files, interrupted runs."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only

from mmdigits.errors import USER_ERROR_EXIT_CODE, is_user_error
from mmdigits.utils.run import close_log_files
from mmdigits.utils.rundir import RunDirRefused
from mmdigits.utils.signals import SIGTERM_EXIT_CODE, is_sigterm
from mmdigits.utils.sweep import hydra_mode, record_failed_job, run_dir, write_error_file

log = logging.getLogger("mmdigits")


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _exit_interrupted() -> NoReturn:
    directory = run_dir()
    msg = (
        f"interrupted by SIGTERM; resume with the same command plus hydra.run.dir={directory} ckpt_path=last"
    )
    log.error(msg)
    print(msg, file=sys.stderr, flush=True)
    sys.exit(SIGTERM_EXIT_CODE)


def detach_log_files(directory: Path | None) -> None:
    """Close and remove the log handlers writing into ``directory`` (their files opened on first record)."""
    if directory is not None:
        close_log_files(lambda path: path.parent == directory.absolute())


def _exit_user_error(err: BaseException) -> NoReturn:
    msg = f"error: {err}"
    log.error(msg)
    print(msg, file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT_CODE)


def clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Error handling of an entry point's task function.

    * every failure writes ``error.txt`` (message + traceback) into the run directory (rank 0 only), except a
      refused claim of the directory (:class:`RunDirRefused`), which leaves it exactly as it was;
    * in a multirun the failure is recorded and the sweep goes on (see ``mmdigits.utils.sweep``);
    * user-input errors become one line on stderr and exit status 2 (``HYDRA_FULL_ERROR=1`` re-raises);
    * SIGTERM during training exits with status 143 after ``checkpoints/last.ckpt`` was saved.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SystemExit as err:
            if is_sigterm(err):
                _exit_interrupted()
            raise
        except Exception as err:
            refused = isinstance(err, RunDirRefused)
            if refused:  # nothing of this run may reach the directory it was refused: not even its log
                detach_log_files(run_dir())
            elif rank_zero_only.rank == 0:
                write_error_file(err)
            if hydra_mode() == RunMode.MULTIRUN:
                return record_failed_job(err)
            if is_user_error(err) and not _full_error():
                _exit_user_error(err)
            raise

    return wrapper
