"""Speaker-grouped folds: which speakers a build tests on, when it does not use the corpus's own split.

``split=corpus`` (the default) keeps the corpus's split: the Arabic corpus's 66 training and 22 test
speakers, FSDD's ``fsdd_test_speakers``. ``split=speaker_folds`` pools every speaker of the corpus and makes
fold ``fold`` of ``folds`` its test part, with scikit-learn's grouped k-fold: for the Arabic corpus
``StratifiedGroupKFold`` over its 88 speakers, stratified by the corpus's male and female halves; for FSDD
``GroupKFold`` (``folds=6`` leaves one speaker out). The assignment depends only on the build's settings
(``folds``, and ``seed`` for the Arabic shuffle), so every fold of one seed partitions the speakers.

Images keep MNIST's own split unless ``image_split=seeded``: the 70,000 MNIST images pooled and a seeded
10,000 of them tested (MNIST has no writer ids to group by).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from mmdigits.data.corpora import ARABIC_TEST_SPEAKER_OFFSET, AudioCorpus
from mmdigits.errors import DataError

SPLITS = ("corpus", "speaker_folds")
IMAGE_SPLITS = ("mnist", "seeded")
ARABIC_MALE = (33, 11)  # the first 33 of the 66 training speakers and 11 of the 22 test speakers are male
MNIST_TEST_SIZE = 10_000


def normalise(s: dict[str, Any]) -> dict[str, Any]:
    """Check the split settings in place; the defaults are dropped, so a corpus-split build's settings are
    what they always were."""
    s["split"] = str(s.get("split") or "corpus")
    s["image_split"] = str(s.get("image_split") or "mnist")
    if s["split"] not in SPLITS:
        raise DataError(f"split={s['split']!r}; expected one of {SPLITS}")
    if s["image_split"] not in IMAGE_SPLITS:
        raise DataError(f"image_split={s['image_split']!r}; expected one of {IMAGE_SPLITS}")
    if s["split"] == "speaker_folds":
        s["folds"], s["fold"] = int(s["folds"]), int(s["fold"])
        if s["folds"] < 2 or not 0 <= s["fold"] < s["folds"]:
            raise DataError(
                f"folds={s['folds']}, fold={s['fold']}; expected folds >= 2 and 0 <= fold < folds"
            )
    else:
        s.pop("folds", None)
        s.pop("fold", None)
        s.pop("split")
    if s["image_split"] == "mnist":
        s.pop("image_split")
    return s


def concat(a: AudioCorpus, b: AudioCorpus) -> AudioCorpus:
    return AudioCorpus(a.feats + b.feats, np.concatenate([a.digits, b.digits]),
                       np.concatenate([a.speakers, b.speakers]), np.concatenate([a.utterances, b.utterances]),
                       a.speaker_names or b.speaker_names)  # fmt: skip


def arabic_gender(speakers: np.ndarray) -> np.ndarray:
    """0 for the corpus's male speakers, 1 for its female ones (by speaker id)."""
    test = speakers >= ARABIC_TEST_SPEAKER_OFFSET
    local = np.where(test, speakers - ARABIC_TEST_SPEAKER_OFFSET, speakers)
    return np.where(test, local >= ARABIC_MALE[1], local >= ARABIC_MALE[0]).astype(np.int64)


def held_out_speakers(speakers: np.ndarray, s: Mapping[str, Any], strata: np.ndarray | None) -> np.ndarray:
    """The speaker ids of fold ``s['fold']``'s test part (utterance-level ``speakers`` and ``strata``)."""
    n_speakers = len(np.unique(speakers))
    if s["folds"] > n_speakers:
        raise DataError(f"folds={s['folds']} but the corpus has {n_speakers} speakers")
    x = np.zeros(len(speakers))
    if strata is None:
        splitter = GroupKFold(n_splits=s["folds"])
        parts = splitter.split(x, groups=speakers)
    else:
        splitter = StratifiedGroupKFold(n_splits=s["folds"], shuffle=True, random_state=s["seed"])
        parts = splitter.split(x, strata, groups=speakers)
    test_idx = list(parts)[s["fold"]][1]
    return np.unique(speakers[test_idx])


def fold_corpora(pool: AudioCorpus, s: Mapping[str, Any], arabic: bool) -> dict[str, AudioCorpus]:
    """Train and test parts of the pooled corpus for the build's fold."""
    strata = arabic_gender(pool.speakers) if arabic else None
    is_test = np.isin(pool.speakers, held_out_speakers(pool.speakers, s, strata))
    return {"train": pool.subset(~is_test), "test": pool.subset(is_test)}


def image_splits(raw: Any, s: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST's own train and test images, or (``image_split=seeded``) a seeded re-split of all of them."""
    own = {split: raw.mnist(split) for split in ("train", "test")}
    if s.get("image_split", "mnist") == "mnist":
        return own
    images = np.concatenate([own["train"][0], own["test"][0]])
    labels = np.concatenate([own["train"][1], own["test"][1]])
    order = np.random.default_rng([int(s["seed"]), 70_000]).permutation(len(images))
    test, train = order[:MNIST_TEST_SIZE], order[MNIST_TEST_SIZE:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
