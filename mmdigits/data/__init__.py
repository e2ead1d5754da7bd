"""Data layer: raw corpora, dataset build, challenge-dir loading and validation, samplers, the DataModule."""
