"""Hyperparameter search on Optuna: persistent studies that resume, pruning, workers that share a study.

``space`` turns Hydra's sweep syntax into Optuna distributions, ``study`` opens the storage and keeps the
study's books (the worker locks, interrupted trials, the budget), ``sweeper`` runs trials through Hydra's
launcher and ``pruning`` is the Lightning callback that reports each epoch to the trial. Hydra finds the
sweeper through ``hydra_plugins/mmdigits_optuna_sweeper``.
"""

JOURNAL_FILE = "optuna.journal"  # the study's storage in its sweep directory (optuna's JournalStorage)
