"""The search space: Hydra's sweep syntax (``interval``, ``tag(log, ...)``, ``range``, ``choice``, ``a,b,c``)
as Optuna distributions, and a trial's values back as command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

PRIMITIVE = (str, int, float, bool, type(None))


@dataclass
class SearchSpace:
    """``fixed``: overrides every trial passes as they are; ``params``: the searched keys; ``texts``: for
    categorical keys, each choice's value as Optuna stores it -> its override text."""

    fixed: list[str] = field(default_factory=list)
    params: dict[str, BaseDistribution] = field(default_factory=dict)
    texts: dict[str, dict[Any, str]] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)  # "+" for a key the config lacks

    def suggest(self, trial: Trial) -> dict[str, Any]:
        """Sample (or, for an enqueued trial, read back) every searched key."""
        values: dict[str, Any] = {}
        for name, dist in self.params.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                assert isinstance(dist, FloatDistribution)
                values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return values

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """The command-line overrides of one trial: the fixed ones, then its values."""
        out = list(self.fixed)
        for name, value in values.items():
            text = self.texts.get(name, {}).get(value)
            value_text = text if text is not None else Transformer.str(value)
            out.append(f"{self.prefixes.get(name, '')}{name}={value_text}")
        return out

    def describe(self) -> dict[str, str]:
        return {name: repr(dist) for name, dist in self.params.items()}


def distribution(override: Override) -> tuple[BaseDistribution, dict[Any, str]]:
    """The Optuna distribution of one sweep override, and (categorical) each choice's override text."""
    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        assert isinstance(value, ChoiceSweep | RangeSweep)
        items = list(override.sweep_iterator(transformer=Transformer.identity))
        # lists and dicts are not values Optuna stores: their override text stands for them
        keys = [x if isinstance(x, PRIMITIVE) else Transformer.str(x) for x in items]
        return CategoricalDistribution(keys), {k: Transformer.str(x) for k, x in zip(keys, items)}
    if isinstance(value, RangeSweep):  # Hydra's range leaves its stop out, as Python's does
        items = list(override.sweep_iterator(transformer=Transformer.identity))
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(items[0], items[-1], step=value.step), {}
        return IntDistribution(items[0], items[-1], step=int(value.step)), {}
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log), {}
        return FloatDistribution(float(value.start), float(value.end), log=log), {}
    raise ValueError(f"{override.input_line}: not a sweep Optuna can sample (choice, range, interval)")


def search_space(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """The config's ``params`` plus the command line's overrides (a sweep there joins the space; a plain
    override is passed to every trial). The command line wins over ``params`` for the same key."""
    lines = {str(k): f"{k}={v}" for k, v in (params or {}).items()}
    parser = OverridesParser.create()
    space = SearchSpace()
    for override in parser.parse_overrides([*lines.values()]) + parser.parse_overrides(arguments):
        key = override.get_key_element().lstrip("+")  # a trial's parameter is named without the +
        for table in (space.params, space.texts, space.prefixes):
            table.pop(key, None)
        space.fixed = [
            f for f in space.fixed if parser.parse_override(f).get_key_element().lstrip("+") != key
        ]
        if override.is_sweep_override():
            space.params[key], texts = distribution(override)
            space.texts.update({key: texts} if texts else {})
            space.prefixes[key] = "++" if override.is_force_add() else "+" if override.is_add() else ""
        else:
            space.fixed.append(override.input_line)
    return space
