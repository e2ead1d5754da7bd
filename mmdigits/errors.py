"""Errors that mean "the user's input is wrong": commands print them as one line and exit with status 2."""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class MMDigitsError(Exception):
    """Base class for problems with the user's files or settings (not bugs). The message names the file."""


class DataError(MMDigitsError, ValueError):
    """Bad, missing or corrupt data. The message names the file (and row) and what was expected."""


class CheckpointError(MMDigitsError):
    """A checkpoint is missing, corrupt, unsafe to load, or was trained with a different model config."""


def is_user_error(err: BaseException) -> bool:
    """Problems with the user's files or settings (printed as one line), as opposed to bugs."""
    return isinstance(err, (MMDigitsError, FileNotFoundError))
