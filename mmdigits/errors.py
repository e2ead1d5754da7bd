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


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message (its type's name when the message is empty), cut to ``limit``
    characters: what a one-line error may quote of an exception raised by a library."""
    line = (str(err).splitlines() or [type(err).__name__])[0]
    return line if limit is None else line[:limit]
