"""Plain data from files we did not write: checked, never resolved or built.

A string holding ``${`` would be an OmegaConf interpolation the moment it reaches OmegaConf or Hydra, and a
resolver can build objects; so readers of checkpoints and run directories accept literal strings only. YAML is
read without aliases: an alias makes a shared node, and a file of nested aliases expands exponentially when
walked.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from mmdigits.errors import first_line

MAX_DEPTH = 16  # our configs nest 3 levels
MAX_ITEMS = 200_000


def shown(value: Any, limit: int = 80) -> str:
    """A bounded one-line repr of a value from a file."""
    text = repr(value) if isinstance(value, (str, bytes)) else reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join_key(prefix: str, key: Any) -> str:
    """``prefix.key`` for an identifier; ``prefix[<repr>]`` for any other key a file may hold (newlines)."""
    if isinstance(key, str) and key.isidentifier():
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{shown(key, 40)}]"


def plain_problem(value: Any, key: str) -> str | None:
    """None when ``value`` is plain data (None, bool, int, float, literal str, and lists and str-keyed dicts
    of them); otherwise ``'<key path> <what is wrong>'``."""
    stack = [(key, value, 0)]
    seen = 0
    while stack:
        key, value, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH or seen > MAX_ITEMS:
            return f"{key} nests deeper than {MAX_DEPTH} levels or holds more than {MAX_ITEMS} items"
        if value is None or isinstance(value, (bool, int, float)):
            continue
        if isinstance(value, str):
            if "${" in value:
                return f"{key} holds an interpolation ({shown(value)}); strings must be literals"
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{key}[{i}]", v, depth + 1) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or "${" in k:
                    return f"{key} has the key {shown(k)}; expected literal string keys"
                stack.append((join_key(key, k), v, depth + 1))
        else:
            return f"{key} is a {type(value).__name__}; expected plain data"
    return None


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(
                f"an alias (*{self.peek_event().anchor}); expected plain data without aliases"
            )
        return super().compose_node(parent, index)


def load_yaml_data(path: str | Path) -> Any:
    """The YAML file at ``path`` as plain data (safe loader, no aliases); ValueError naming the file."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        first = first_line(err)
        raise ValueError(f"{path}: not a plain-data YAML file: {first}") from None
