"""A study's storage and books: where it lives, which worker runs which trial, what an interrupted trial
becomes, how many trials are left.

* **Storage**: ``storage: null`` is a journal file in the sweep directory (``<sweep dir>/optuna.journal``,
  Optuna's ``JournalStorage(JournalFileBackend(...))``); a path is a journal file there; a URL with ``://``
  is a database (``sqlite:///search.db``, ``postgresql://...``).
* **Workers**: each sweeper process holds an exclusive ``flock`` on ``<sweep dir>/.workers/<host>-<pid>.lock``
  for as long as it runs and writes that name into each trial it asks (user attribute ``worker``). The lock
  is released when the process ends, however it ends, so a RUNNING trial whose worker's lock is free was
  left behind by a worker that died.
* **Interrupted trials** (RUNNING, worker gone) are told FAIL with the user attribute ``interrupted`` and
  enqueued again with the same parameters and the same run directory (``run``): the job resumes from its
  ``checkpoints/last.ckpt``. An interrupted trial is not counted toward ``n_trials``; its re-run is.
* **Budget**: ``n_trials`` is the study's total; asking happens under ``<sweep dir>/.workers/ask.lock``, so
  workers that share the sweep directory never ask more than the total between them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mmdigits.errors import MMDigitsError
from mmdigits.search import JOURNAL_FILE

log = logging.getLogger("mmdigits.search")

WORKERS_DIR = ".workers"
ASK_LOCK = "ask.lock"
# states that count toward n_trials (see counted)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def storage_url(storage: str | None, sweep_dir: str | os.PathLike[str]) -> str:
    """The storage as a user names it: a database URL, or the absolute path of a journal file."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage or Path(sweep_dir) / JOURNAL_FILE).absolute())


def open_storage(storage: str | None, sweep_dir: str | os.PathLike[str]) -> BaseStorage:
    url = storage_url(storage, sweep_dir)
    if "://" in url:
        return RDBStorage(url)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward n_trials: not one interrupted (its re-run counts) and not one that a
    command's error kept from running (``not_run``)."""
    return (
        trial.state in COUNTED
        and not trial.user_attrs.get("interrupted")
        and "not_run" not in trial.user_attrs
    )


def trials_left(study: optuna.Study, n_trials: int) -> int:
    return max(0, n_trials - sum(counted(t) for t in study.get_trials(deepcopy=False)))


def _try_lock(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class Worker:
    """This process as a worker of a study: its lock, held until :meth:`close` (or the process's end)."""

    def __init__(self, sweep_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(sweep_dir) / WORKERS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self._fh: IO[str] | None = open(self.dir / f"{self.name}.lock", "a+")  # noqa: SIM115 - held open
        if not _try_lock(self._fh):
            raise RuntimeError(f"{self._fh.name}: held by another process")

    def close(self) -> None:
        """A worker that finished: its trials are all told, so its lock file can go."""
        if self._fh is not None:
            (self.dir / f"{self.name}.lock").unlink(missing_ok=True)
            self._fh.close()
            self._fh = None

    def alive(self, name: str | None) -> bool:
        """Whether the worker ``name`` still runs. A lock file that is not there belongs to a worker on
        another machine whose sweep directory this one cannot see: taken to be alive."""
        if name == self.name:
            return True
        path = self.dir / f"{name}.lock"
        if not name or not path.is_file():
            return bool(name)
        with open(path, "a+") as fh:
            return not _try_lock(fh)  # closing the file releases a lock taken here

    @contextmanager
    def asking(self) -> Iterator[None]:
        """The study's books are kept by one worker at a time (stale trials, the budget, asking)."""
        with open(self.dir / ASK_LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


def requeue_interrupted(study: optuna.Study, storage: BaseStorage, worker: Worker) -> list[int]:
    """Fail and enqueue again every RUNNING trial whose worker is gone; the numbers of the new trials are
    not known until they are asked, so the old ones are returned."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    stale = [t for t in stale if not worker.alive(t.user_attrs.get("worker"))]
    for t in stale:
        storage.set_trial_user_attr(trial_id(storage, study.study_name, t.number), "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(
            t.params, user_attrs={"run": t.user_attrs.get("run", t.number), "resumes": t.number}
        )
        log.warning(
            "trial %d was interrupted (worker %s is gone): marked failed, queued again to resume its run %s",
            t.number,
            t.user_attrs.get("worker"),
            t.user_attrs.get("run", t.number),
        )
    for name in {t.user_attrs.get("worker") for t in stale}:
        if name:
            (worker.dir / f"{name}.lock").unlink(missing_ok=True)
    return [t.number for t in stale]


def _items(part: Any) -> set[str]:
    """A command's overrides (a list) or search space (key -> distribution) as a set of ``key=value``."""
    return {f"{k}={v}" for k, v in part.items()} if isinstance(part, dict) else set(part or [])


def check_command(study: optuna.Study, command: dict[str, Any]) -> None:
    """A study continues only under the command that started it (its fixed overrides and search space):
    another command's trials would not be comparable with the study's."""
    recorded = study.user_attrs.get("command")
    if recorded is None:
        study.set_user_attr("command", command)
        return
    differences = [
        f"{key}: the study's {sorted(old - new)}, this command's {sorted(new - old)}"
        for key in ("overrides", "params")
        if (old := _items(recorded.get(key))) != (new := _items(command.get(key)))
    ]
    if differences:
        raise MMDigitsError(
            f"study {study.study_name!r} was started by another command ({'; '.join(differences)}); continue "
            "it with the same overrides, or start another study (hydra.sweeper.study_name=... or "
            "hydra.sweep.dir=...)"
        )
