"""Speaker-grouped cross-validation (data.split=speaker_folds): who is tested, validated and trained on."""

from __future__ import annotations

import numpy as np
import pytest

from mmdigits.data.build import build_dataset, read_manifest
from mmdigits.data.datamodule import MMDigitsDataModule
from mmdigits.data.folds import arabic_gender
from mmdigits.errors import DataError

SMALL = {"n_train": 300, "n_test": 150, "match_rate": 0.3, "seed": 0}
FOLDS = 3


@pytest.fixture(scope="module")
def fold_dirs(tiny_raw_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    opts = {"verify": False, "download": False, "split": "speaker_folds", "folds": FOLDS, **SMALL}
    return [build_dataset(root / f"fold{f}", tiny_raw_dir, fold=f, **opts) for f in range(FOLDS)]


def speakers(d, split):
    return set(np.load(d / f"speaker_spoken_{split}.npy").tolist())


def test_every_speaker_is_tested_in_exactly_one_fold(fold_dirs):
    tested = [speakers(d, "test") for d in fold_dirs]
    every = set().union(*tested, *(speakers(d, "train") for d in fold_dirs))
    assert len(every) == 13  # the tiny corpora's 10 + 3 speakers, pooled
    assert sum(len(t) for t in tested) == len(every) and set().union(*tested) == every


def test_no_speaker_is_in_two_parts_of_a_fold(fold_dirs):
    for d in fold_dirs:
        assert not speakers(d, "train") & speakers(d, "test")


def test_the_manifest_records_the_fold_and_its_speakers(fold_dirs):
    for f, d in enumerate(fold_dirs):
        m = read_manifest(d)
        assert m["settings"]["split"] == "speaker_folds"
        assert (m["settings"]["folds"], m["settings"]["fold"]) == (FOLDS, f)
        assert set(m["speakers"]["test"]) == speakers(d, "test")


def test_a_build_is_never_reused_for_another_fold(fold_dirs, tiny_raw_dir):
    with pytest.raises(DataError, match="fold"):
        build_dataset(fold_dirs[0], tiny_raw_dir, verify=False, download=False, split="speaker_folds",
                      folds=FOLDS, fold=1, **SMALL)  # fmt: skip


def test_validation_is_carved_from_the_training_folds_by_speaker(fold_dirs):
    dm = MMDigitsDataModule(dir=str(fold_dirs[1]), split="speaker_folds", folds=FOLDS, fold=1,
                            build=SMALL, val_fraction=0.3, batch_size=32)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    spk = np.load(fold_dirs[1] / "speaker_spoken_train.npy")
    parts = dm.parts
    train, val = set(spk[parts.train].tolist()), set(spk[parts.val].tolist())
    assert val and train and not train & val
    assert not (train | val) & speakers(fold_dirs[1], "test")


def test_corpus_split_builds_keep_their_settings():
    from mmdigits.data.build import build_settings

    assert "split" not in build_settings() and "fold" not in build_settings()


@pytest.mark.parametrize("bad", [{"folds": 1}, {"fold": 3}, {"fold": -1}])
def test_impossible_folds_are_refused(bad):
    from mmdigits.data.build import build_settings

    with pytest.raises(DataError, match="folds"):
        build_settings(split="speaker_folds", **{"folds": 3, "fold": 0, **bad})


def test_the_arabic_strata_are_its_male_and_female_halves():
    ids = np.array([0, 32, 33, 65, 66, 76, 77, 87])  # train 0-32 male, 33-65 female; test 66-76, 77-87
    assert arabic_gender(ids).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
