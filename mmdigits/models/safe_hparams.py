"""A checkpoint's hyperparameters, checked as plain data before anything is built from them.

The model is rebuilt by handing these configs to Hydra, and Hydra resolves OmegaConf interpolations before
it builds anything: a resolver such as ``oc.create`` turns a plain string into new ``_target_`` nodes. So a
checkpoint's hyperparameters must pass this schema first:

* every value is plain data (None, bool, int, float, str, and lists and str-keyed dicts of them), and every
  string is a literal: nothing containing ``${`` ever reaches OmegaConf;
* every ``_target_`` is a class of the zoo, or an optimiser or scheduler of :data:`OPTIMISERS`, looked up
  in a fixed table (no module named by the file is ever imported);
* every key of a config is a parameter of its target (plus ``_partial_``), and every top-level key is a
  parameter of :class:`~mmdigits.models.module.MultimodalModule`.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn, optim

from mmdigits.errors import CheckpointError
from mmdigits.models import audio, fusion, image, inception, layers, rnn
from mmdigits.models.module import MultimodalModule
from mmdigits.utils.plain import join_key, plain_problem, shown

ZOO: dict[str, type] = {
    f"{m.__name__}.{name}": obj
    for m in (audio, fusion, image, inception, layers, rnn)
    for name, obj in vars(m).items()
    if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == m.__name__
}
# the optimisers and schedulers a config may name (conf/ uses AdamW and OneCycleLR; a test keeps them listed)
OPTIMISERS: dict[str, type] = {
    **{f"torch.optim.{c.__name__}": c for c in (optim.AdamW, optim.Adam, optim.SGD, optim.RMSprop)},
    **{
        f"torch.optim.lr_scheduler.{c.__name__}": c
        for c in (
            optim.lr_scheduler.OneCycleLR,
            optim.lr_scheduler.CosineAnnealingLR,
            optim.lr_scheduler.StepLR,
            optim.lr_scheduler.MultiStepLR,
            optim.lr_scheduler.ExponentialLR,
        )
    },
}
# keys a config may hold besides its target's parameters: per top-level hyperparameter
MODULE = "mmdigits.models.module.MultimodalModule"
EXTRA_KEYS = {"scheduler": {"interval"}}  # Lightning's stepping interval (mmdigits.models.schedule)


def _refuse(path: Any, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: refuses to load: its hyperparameter {key} {why}")


def _parameters(cls: type) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(cls).parameters.values()
    return {p.name for p in params if p.kind in kinds}


def _check_config(cfg: dict[str, Any], path: Any, key: str, extra: set[str] = frozenset()) -> None:
    """A ``_target_`` dict: a known target, and only its parameters as keys (nested configs too)."""
    target = cfg["_target_"]
    cls = (ZOO.get(target) or OPTIMISERS.get(target)) if isinstance(target, str) else None
    if cls is None:
        raise _refuse(
            path,
            f"{key}._target_",
            f"asks to build {shown(target)}, which is not part of the model zoo (mmdigits.models.*) or a "
            "torch optimiser/scheduler that configs use",
        )
    allowed = _parameters(cls) | {"_target_", "_partial_"} | set(extra)
    for k, v in cfg.items():
        if k not in allowed:
            raise _refuse(path, join_key(key, k), f"is not a parameter of {target}")
        if k == "_partial_" and not isinstance(v, bool):
            raise _refuse(path, f"{key}._partial_", f"is {shown(v)}; expected true or false")
        _check_nested(v, path, join_key(key, k))


def _check_nested(value: Any, path: Any, key: str) -> None:
    if isinstance(value, dict) and "_target_" in value:
        _check_config(value, path, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_nested(v, path, join_key(key, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_nested(v, path, f"{key}[{i}]")


def check_hparams(hparams: Any, path: Any) -> None:
    """CheckpointError (one line: the file and the offending key) unless ``hparams`` can only build the
    model zoo's classes from literal plain data."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: refuses to load: its hyper_parameters are not a mapping")
    problem = plain_problem(hparams, "hyper_parameters")
    if problem:
        raise CheckpointError(f"{path}: refuses to load: its {problem}")
    module_params = _parameters(MultimodalModule)
    for key, value in hparams.items():
        if key not in module_params:
            raise _refuse(path, join_key("", key), f"is not a parameter of {MODULE}")
        if isinstance(value, dict) and "_target_" in value:
            _check_config(value, path, key, EXTRA_KEYS.get(key, set()))
        else:
            _check_nested(value, path, key)
