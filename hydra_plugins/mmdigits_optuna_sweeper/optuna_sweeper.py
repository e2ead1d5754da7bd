"""A Hydra sweeper over Optuna's ask-and-tell interface: ``python -m mmdigits.train -m hparams_search=...``.

This module is imported by Hydra's plugin scan on every start, so it imports neither Optuna nor mmdigits:
the search (:mod:`mmdigits.search.sweeper`) is loaded when a sweep begins. The config node
``hydra/sweeper=mmdigits_optuna`` is registered here; its pruner is a group of its own
(``conf/hydra/sweeper/pruner/``).
"""

# no ``from __future__ import annotations``: Hydra's scan runs this module before it is in sys.modules, where
# dataclasses cannot resolve string annotations
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mmdigits_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sampler and the pruner stay configs: the search builds them
    # null: a journal file <sweep dir>/optuna.journal; a path: a journal file there; a database URL
    # (sqlite:///search.db, postgresql://...): Optuna's RDB storage
    storage: str | None = None
    study_name: str = "mmdigits"
    direction: str = "maximize"
    # the study's total: a rerun (or another worker) runs only what is missing
    n_trials: int = 20
    # trials asked and launched together (one launcher batch: hydra/launcher=parallel runs them at once)
    n_jobs: int = 1
    # an Optuna sampler (_target_ and its arguments); with a seed, trial k samples with seed + k
    sampler: Any = None
    # an Optuna pruner, from hydra/sweeper/pruner=median|successive_halving (null: no pruning)
    pruner: Any = None
    # the search space: key -> interval(a, b), tag(log, interval(a, b)), range(a, b, step), choice(...)
    params: dict[str, Any] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="mmdigits_optuna", node=OptunaSweeperConf)


class OptunaSweeper(Sweeper):
    """Runs ``n_trials`` trials of one persistent Optuna study; see :mod:`mmdigits.search.sweeper`."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.search: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from mmdigits.search.sweeper import OptunaSearch

        self.config, self.hydra_context = config, hydra_context
        self.search = OptunaSearch(self, hydra_context, task_function, config, **self.settings)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.run(arguments)
