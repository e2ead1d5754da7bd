"""The validation split, carved from train so that validation never shares data with training.

Builds of ours carry speaker ids: whole speakers go to validation. The original challenge files carry none,
and reuse each utterance (and image) in many pairs, so a random split would put the same recording on both
sides. There, validation takes whole utterances (identified by content), and training rows whose image also
appears in validation are left out of both.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from mmdigits.data.challenge import SplitData

log = logging.getLogger(__name__)


@dataclass
class TrainVal:
    train: np.ndarray  # row indices
    val: np.ndarray
    by: str  # what validation takes whole: "speaker", "utterance" or "none"
    dropped: int = 0  # rows in neither part (their image is in validation)
    shared: dict[str, int] | None = None  # utterances/images/speakers on both sides (0 by construction)


def image_keys(written: np.ndarray) -> np.ndarray:
    """A 16-byte digest of each row's pixels: equal for equal images, in any build."""
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in written], dtype="S16")


def image_ids(written: np.ndarray) -> np.ndarray:
    """An id per row that is equal for rows holding the same pixels."""
    return np.unique(image_keys(written), return_inverse=True)[1].astype(np.int64).reshape(-1)


def split_train_val(split: SplitData, val_fraction: float, seed: int) -> TrainVal:
    """Validation by whole speakers (or whole utterances without speaker ids); training rows whose image is
    in validation are dropped from both parts."""
    n = len(split)
    rng = np.random.default_rng([seed, 7])
    if split.speaker is not None and len(np.unique(split.speaker)) >= 2:
        by, groups = "speaker", split.speaker
    elif len(split.utterances) >= 2:
        by, groups = "utterance", split.row_audio
    else:
        by = "none"
    if val_fraction <= 0 or by == "none":
        return TrainVal(np.arange(n), np.zeros(0, np.int64), "none")
    is_val = _whole_groups(groups, val_fraction, rng)
    images = image_ids(split.written)
    in_val = np.zeros(int(images.max()) + 1, bool)
    in_val[images[is_val]] = True
    dropped = ~is_val & in_val[images]
    parts = TrainVal(np.flatnonzero(~is_val & ~dropped), np.flatnonzero(is_val), by, int(dropped.sum()))
    parts.shared = {
        "utterances": len(np.intersect1d(split.row_audio[parts.train], split.row_audio[parts.val])),
        "images": len(np.intersect1d(images[parts.train], images[parts.val])),
    }
    if split.speaker is not None:
        parts.shared["speakers"] = len(np.intersect1d(split.speaker[parts.train], split.speaker[parts.val]))
    return parts


def _whole_groups(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Rows of randomly ordered whole groups, until they hold ``fraction`` of the rows (at least one group,
    never all of them)."""
    names, counts = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    k = int(np.searchsorted(np.cumsum(counts[order]), fraction * len(groups))) + 1
    k = min(max(k, 1), len(names) - 1)
    return np.isin(groups, names[order[:k]])
