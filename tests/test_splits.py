"""split_train_val and image_ids on tiny splits: whole speakers (or utterances) go to validation, training
rows whose image is in validation are dropped, and nothing is shared."""

from __future__ import annotations

import numpy as np
import pytest

from mmdigits.data.challenge import SplitData, Utterances
from mmdigits.data.splits import image_ids, split_train_val


def toy_split(n: int = 24, speakers: int | None = 4, utterances: int = 12, images: int = 16) -> SplitData:
    """``n`` rows; row i plays utterance i % utterances (speaker: utterance % speakers) and shows image
    i % images, so some images and utterances sit in several rows."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 784), dtype=np.uint8)
    rows = np.arange(n)
    row_audio = rows % utterances
    utt = Utterances.from_arrays([np.full((2, 13), u, np.float32) for u in range(utterances)])
    speaker = None if speakers is None else row_audio % speakers
    return SplitData(pixels[rows % images], utt, row_audio.astype(np.int64), speaker=speaker)


def check_parts(split: SplitData, parts) -> None:
    n = len(split)
    dropped = np.setdiff1d(np.arange(n), np.concatenate([parts.train, parts.val]))
    assert len(np.intersect1d(parts.train, parts.val)) == 0
    assert len(dropped) == parts.dropped
    assert (np.diff(parts.train) > 0).all() and (np.diff(parts.val) > 0).all()
    images = image_ids(split.written)
    assert np.isin(images[dropped], images[parts.val]).all()  # dropped: their image is in validation
    assert not np.isin(images[parts.train], images[parts.val]).any()
    assert not np.isin(split.row_audio[parts.train], split.row_audio[parts.val]).any()


def test_image_ids_are_equal_exactly_for_equal_pixels():
    rows = np.zeros((5, 784), np.uint8)
    rows[1, 3] = rows[3, 3] = 7
    rows[4, 783] = 1
    ids = image_ids(rows)
    assert ids.dtype == np.int64 and ids.shape == (5,)
    assert ids[0] == ids[2] and ids[1] == ids[3]
    assert len({ids[0], ids[1], ids[4]}) == 3
    assert sorted(set(ids.tolist())) == [0, 1, 2]


def test_whole_speakers_go_to_validation():
    split = toy_split()
    parts = split_train_val(split, 0.25, seed=0)
    assert parts.by == "speaker"
    check_parts(split, parts)
    val_speakers = np.unique(split.speaker[parts.val])
    assert np.isin(split.speaker, val_speakers).sum() == len(parts.val)  # every row of those speakers
    assert not np.isin(split.speaker[parts.train], val_speakers).any()
    assert parts.shared == {"utterances": 0, "images": 0, "speakers": 0}


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.6])
def test_validation_takes_the_fewest_whole_groups_that_reach_the_fraction(fraction):
    split = toy_split(n=40, speakers=5, utterances=20, images=40)  # 8 rows per speaker, all images distinct
    parts = split_train_val(split, fraction, seed=1)
    groups = len(np.unique(split.speaker[parts.val]))
    assert len(parts.val) >= fraction * len(split)
    assert (groups - 1) * 8 < fraction * len(split)
    assert parts.dropped == 0 and len(parts.train) + len(parts.val) == len(split)


@pytest.mark.parametrize(("fraction", "groups"), [(1e-6, 1), (0.99, 4), (1.0, 4)])
def test_at_least_one_group_and_never_all(fraction, groups):
    split = toy_split(n=40, speakers=5, utterances=20, images=40)
    parts = split_train_val(split, fraction, seed=2)
    assert len(np.unique(split.speaker[parts.val])) == groups
    assert len(parts.train) > 0


def test_one_speaker_or_none_falls_back_to_whole_utterances():
    for split in (toy_split(speakers=1), toy_split(speakers=None)):
        parts = split_train_val(split, 0.25, seed=0)
        assert parts.by == "utterance"
        check_parts(split, parts)
        assert set(parts.shared) == (
            {"utterances", "images"} | ({"speakers"} if split.speaker is not None else set())
        )
        assert parts.shared["utterances"] == parts.shared["images"] == 0
        # the one speaker is on both sides
        assert parts.shared.get("speakers", 1) == 1
        assert len(parts.val) >= 6


def test_images_shared_with_validation_are_dropped_from_training():
    split = toy_split(n=24, speakers=None, utterances=12, images=6)  # each image in 4 rows
    parts = split_train_val(split, 0.2, seed=0)
    check_parts(split, parts)
    assert parts.dropped > 0
    images = image_ids(split.written)
    expected = np.flatnonzero(np.isin(images, images[parts.val]) & ~np.isin(np.arange(24), parts.val))
    assert parts.dropped == len(expected)


@pytest.mark.parametrize("fraction", [0.0, -0.5])
def test_no_validation_asked(fraction):
    parts = split_train_val(toy_split(), fraction, seed=0)
    assert parts.by == "none" and parts.train.tolist() == list(range(24)) and len(parts.val) == 0
    assert parts.val.dtype == np.int64 and parts.dropped == 0 and parts.shared is None


def test_no_validation_possible_from_a_single_utterance():
    split = toy_split(n=6, speakers=None, utterances=1, images=6)
    parts = split_train_val(split, 0.5, seed=0)
    assert parts.by == "none" and parts.train.tolist() == list(range(6)) and len(parts.val) == 0


def test_two_utterances_are_enough():
    split = toy_split(n=6, speakers=None, utterances=2, images=6)
    parts = split_train_val(split, 0.5, seed=0)
    assert parts.by == "utterance" and len(parts.val) == 3


def test_the_seed_decides_and_repeats():
    split = toy_split(n=40, speakers=8, utterances=40, images=40)
    first = split_train_val(split, 0.25, seed=5)
    assert first.val.tolist() == split_train_val(split, 0.25, seed=5).val.tolist()
    others = {tuple(split_train_val(split, 0.25, seed=s).val.tolist()) for s in range(6)}
    assert len(others) > 1


def test_two_speakers_are_enough():
    split = toy_split(n=8, speakers=2, utterances=4, images=8)
    parts = split_train_val(split, 0.5, seed=0)
    assert parts.by == "speaker" and len(np.unique(split.speaker[parts.val])) == 1
    assert parts.shared == {"utterances": 0, "images": 0, "speakers": 0}
