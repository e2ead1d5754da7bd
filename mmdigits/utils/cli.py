"""Shared plumbing for the Hydra entry points: clean one-line errors, metrics files."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from mmdigits.errors import MMDigitsError

log = logging.getLogger("mmdigits")


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [MMDigitsError, FileNotFoundError]
    try:
        from mmdigits.data.errors import DataError

        errors.append(DataError)
    except ImportError:  # pragma: no cover - data package always present
        pass
    return tuple(errors)


def clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-input errors into one line on stderr and exit status 2.

    ``HYDRA_FULL_ERROR=1`` lets the exception (and its traceback) through instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            msg = f"error: {err}"
            log.error(msg)
            print(msg, file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
