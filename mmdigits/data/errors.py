"""The single exception type of the data layer."""


class DataError(ValueError):
    """Bad, missing or corrupt data. The message names the file (and row) and what was expected."""
