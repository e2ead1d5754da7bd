"""Errors that mean "the user's input is wrong", printed by the CLIs as one clear line."""


class MMDigitsError(Exception):
    """Base class for problems with the user's files or settings (not bugs)."""


class CheckpointError(MMDigitsError):
    """A checkpoint is missing, corrupt, or was trained with a different model config."""
