"""Data layer: raw corpora readers, dataset builder, challenge-dir loader, samplers and the DataModule."""

from mmdigits.data.errors import DataError

__all__ = ["DataError"]
