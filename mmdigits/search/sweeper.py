"""The search loop behind ``hydra/sweeper=mmdigits_optuna``: ask trials, launch them as Hydra jobs, tell
Optuna how each ended.

Each job is an ordinary run of ``mmdigits.train`` in ``<sweep dir>/<run>_<run name>`` (``run`` is the trial's
number, or for a trial queued again after an interruption the number of the trial it resumes), with the
trial's values as overrides and ``callbacks.optuna_pruning.trial=<number>``, through which the job reports
``val/acc`` after each epoch. A job that the pruner stops writes ``"stopped_by": "pruned"`` into its
``metrics.json`` and its trial is told PRUNED; a job that returns the optimized metric is told COMPLETE; a
failed job (NaN, an exception) is told FAIL with its error in the trial's user attribute ``error``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial, TrialState

from mmdigits.errors import USER_ERROR_EXIT_CODE, MMDigitsError
from mmdigits.search.space import SearchSpace, search_space
from mmdigits.search.study import (
    Worker,
    check_command,
    open_storage,
    requeue_interrupted,
    storage_url,
    trials_left,
)
from mmdigits.utils.io import atomic_write_bytes

log = logging.getLogger("mmdigits.search")

RESULTS_FILE = "optimization_results.yaml"
PRUNING_CALLBACK = "optuna_pruning"


def run_dir_of(ret: JobReturn) -> Path | None:
    try:
        return Path(ret.hydra_cfg.hydra.runtime.output_dir)  # type: ignore[union-attr]
    except AttributeError:
        return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def quoted(text: str) -> str:
    """``text`` as a quoted override value (interpolations in it stay interpolations)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class OptunaSearch:
    def __init__(
        self,
        sweeper: Sweeper,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
        *,
        storage: str | None,
        study_name: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: Any,
        pruner: Any,
        params: Any,
    ) -> None:
        self.sweeper, self.config = sweeper, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.storage, self.study_name, self.direction = storage, study_name, direction
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.sampler = OmegaConf.create(sampler) if sampler else None
        self.params = OmegaConf.to_container(OmegaConf.create(params or {}), resolve=False)
        self.errors: list[BaseException] = []

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, arguments: list[str]) -> list[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        space = search_space(self.params, arguments)  # type: ignore[arg-type]
        storage = open_storage(self.storage, sweep_dir)
        worker = Worker(sweep_dir)
        study = optuna.create_study(
            storage=storage, study_name=self.study_name, direction=self.direction, load_if_exists=True
        )
        try:
            check_command(study, {"overrides": space.fixed, "params": space.describe()})
        except MMDigitsError as err:  # a user's mistake: one line and status 2, as the entry points do
            log.error("error: %s", err)
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None
        url = storage_url(self.storage, sweep_dir)
        log.info(
            "study %r (%d of %d trials to go), storage %s; watch it with: optuna-dashboard %s",
            self.study_name,
            trials_left(study, self.n_trials),
            self.n_trials,
            url,
            url,
        )
        returns: list[JobReturn] = []
        while True:
            with worker.asking():
                requeue_interrupted(study, storage, worker)
                batch = self.ask(study, space, worker)
            if not batch:
                break
            returns += self.launch(study, space, batch)
        worker.close()
        self.write_results(study, sweep_dir, url)
        if self.errors:
            raise self.errors[0]
        return returns

    def reseed(self, study: optuna.Study) -> None:
        """A sampler with a seed samples trial k with seed + k: a resumed search, or several workers, draw
        what one uninterrupted run would (a fresh sampler of one seed would repeat its first draws)."""
        if self.sampler is None:
            return
        seed = self.sampler.get("seed")
        if isinstance(seed, int):
            study.sampler = instantiate(self.sampler, seed=seed + len(study.get_trials(deepcopy=False)))
        elif not getattr(self, "_sampler_set", False):
            study.sampler, self._sampler_set = instantiate(self.sampler), True

    def ask(self, study: optuna.Study, space: SearchSpace, worker: Worker) -> list[tuple[Trial, dict]]:
        batch = []
        for _ in range(min(self.n_jobs, trials_left(study, self.n_trials))):
            self.reseed(study)
            trial = study.ask()  # an enqueued trial (an interrupted one queued again) comes first
            values = space.suggest(trial)
            trial.set_user_attr("run", trial.user_attrs.get("run", trial.number))
            trial.set_user_attr("worker", worker.name)
            batch.append((trial, values))
        return batch

    def job_overrides(self, trial: Trial) -> list[str]:
        """Where the job runs (its run directory is named after ``run``), and its pruning callback's trial."""
        subdir = str(OmegaConf.to_container(self.config.hydra.sweep, resolve=False)["subdir"])  # type: ignore
        run = str(trial.user_attrs["run"])
        subdir = (
            subdir.replace("${hydra.job.num}", run) if "${hydra.job.num}" in subdir else f"{run}_{subdir}"
        )
        out = [f"hydra.sweep.subdir={quoted(subdir)}"]
        if (self.config.get("callbacks") or {}).get(PRUNING_CALLBACK) is not None:
            out.append(f"callbacks.{PRUNING_CALLBACK}.trial={trial.number}")
        return out

    def launch(
        self, study: optuna.Study, space: SearchSpace, batch: list[tuple[Trial, dict]]
    ) -> list[JobReturn]:
        jobs = [tuple(space.overrides(values) + self.job_overrides(trial)) for trial, values in batch]
        for (trial, _), job in zip(batch, jobs):
            log.info("trial %d (run %s): %s", trial.number, trial.user_attrs["run"], " ".join(job))
        try:
            self.sweeper.validate_batch_is_legal(jobs)
        except Exception as err:  # the command's error, not the trials': they do not count
            for trial, _ in batch:
                trial.set_user_attr("not_run", f"{type(err).__name__}: {err}")
                study.tell(trial, state=TrialState.FAIL)
            raise
        returns = list(self.launcher.launch(jobs, initial_job_idx=batch[0][0].number))
        for (trial, _), ret in zip(batch, returns):
            self.tell(study, trial, ret)
        return returns

    def tell(self, study: optuna.Study, trial: Trial, ret: JobReturn) -> None:
        error = None
        try:
            value = ret.return_value
        except Exception as err:  # a job that raised past the entry point's own error handling
            value, error = None, f"{type(err).__name__}: {err}"
            self.errors.append(err)
        run_dir = run_dir_of(ret)
        metrics = read_json(run_dir / "metrics.json") if run_dir else {}
        if run_dir is not None:
            trial.set_user_attr("run_dir", str(run_dir))
        if metrics.get("stopped_by") == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d: pruned after %s epoch(s)", trial.number, metrics.get("epochs"))
        elif isinstance(value, int | float) and math.isfinite(value):
            study.tell(trial, float(value))
            log.info("trial %d: %s", trial.number, value)
        else:
            if error is None and run_dir is not None and (run_dir / "error.txt").is_file():
                error = (run_dir / "error.txt").read_text().splitlines()[0]
            trial.set_user_attr("error", error or f"the job returned {value!r}, not a number")
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, trial.user_attrs["error"])

    # -- the summary ------------------------------------------------------------------------------------
    def write_results(self, study: optuna.Study, sweep_dir: Path, url: str) -> None:
        trials = study.get_trials(deepcopy=False)
        results: dict[str, Any] = {
            "name": study.study_name,
            "storage": url,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "trials": dict(Counter(t.state.name.lower() for t in trials)),
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            results.update(
                best_trial=best.number,
                best_value=best.value,
                best_params=best.params,
                best_run_dir=best.user_attrs.get("run_dir"),
            )
            log.info("best trial %d: %s, %s", best.number, best.value, best.params)
        atomic_write_bytes(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)).encode())
