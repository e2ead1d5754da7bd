"""mmdigits' Optuna sweeper for Hydra (``hydra/sweeper=mmdigits_optuna``); the search itself is
:mod:`mmdigits.search`. Hydra finds it by scanning the ``hydra_plugins`` namespace package."""
