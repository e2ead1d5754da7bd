"""The checks of mmdigits.data.challenge on tiny arrays: what each accepts, what it converts to, and the one
line that names the file, row and column of what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmdigits.data.challenge import (
    ChallengeData,
    Utterances,
    check_binary,
    check_int,
    check_spoken,
    check_written,
    load_challenge_dir,
    load_utterances,
)
from mmdigits.errors import DataError


def images(n: int = 2, dtype=np.uint8) -> np.ndarray:
    arr = np.zeros((n, 784), dtype)
    arr[:, 3] = 200
    return arr


def objects(*rows) -> np.ndarray:
    out = np.empty(len(rows), object)
    for i, r in enumerate(rows):
        out[i] = r
    return out


def test_written_accepts_whole_pixels_and_images():
    out = check_written(images(dtype=np.float64), "w.npy")
    assert out.dtype == np.uint8 and out[0, 3] == 200
    square = check_written(images().reshape(2, 28, 28), "w.npy")
    assert square.shape == (2, 784)
    same = images()
    assert check_written(same, "w.npy") is same
    assert check_written(images(dtype=np.int16), "w.npy").dtype == np.uint8
    edge = images()
    edge[1, 7] = 255
    assert check_written(edge.astype(np.int64), "w.npy")[1, 7] == 255
    assert check_written(np.zeros((0, 784), np.uint8), "w.npy").shape == (0, 784)


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((2, 783)), r"w.npy: images have shape \(2, 783\); expected \(n, 784\) pixels per row"),
        (np.zeros((2, 28, 27)), r"images have shape \(2, 28, 27\)"),
        (np.zeros(784), r"images have shape \(784,\)"),
        (np.ones((2, 784), bool), r"w.npy: boolean pixels; expected raw pixel values 0..255 \(uint8\)"),
        (np.full((2, 784), "a"), r"w.npy: dtype <U1; expected numeric pixels 0..255"),
        (np.ones((2, 784)), r"w.npy: every pixel is 0 or 1; expected raw pixel values 0..255 \(normalised"),
        (np.zeros((2, 784), np.uint8), r"every pixel is 0 or 1"),
    ],
)
def test_written_refuses(arr, message):
    with pytest.raises(DataError, match=message):
        check_written(arr, "w.npy")


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (256, np.int64, r"w.npy: row 1, column 9: pixel value 256; expected 0..255"),
        (-1, np.int64, r"row 1, column 9: pixel value -1; expected 0..255"),
        (np.nan, np.float32, r"row 1, column 9: pixel value nan; expected 0..255"),
        (np.inf, np.float64, r"row 1, column 9: pixel value inf"),
        (
            2.5,
            np.float64,
            r"row 1, column 9: pixel value 2.5; expected whole numbers 0..255 \(normalised images",
        ),
    ],
)
def test_written_names_the_first_bad_pixel(value, dtype, message):
    arr = images(3, dtype)
    arr[1, 9] = value
    arr[2, 1] = value
    with pytest.raises(DataError, match=message):
        check_written(arr, "w.npy")


def test_binary_labels():
    assert check_binary(np.array([True, False]), "m.npy").tolist() == [True, False]
    out = check_binary(np.array([[1], [0], [1]]), "m.npy")
    assert out.dtype == bool and out.tolist() == [True, False, True]
    assert check_binary(np.array([0.0, 1.0]), "m.npy").tolist() == [False, True]
    with pytest.raises(DataError, match=r"m.npy: labels have shape \(2, 2\); expected \(n,\) boolean or 0/1"):
        check_binary(np.zeros((2, 2)), "m.npy")
    with pytest.raises(DataError, match=r"m.npy: dtype <U1; expected boolean or 0/1 labels"):
        check_binary(np.array(["1"]), "m.npy")
    with pytest.raises(DataError, match=r"m.npy: row 2: label -1; expected boolean or 0/1"):
        check_binary(np.array([0, 1, -1, 2]), "m.npy")


def test_integer_ids_within_bounds():
    out = check_int(np.array([0, 9], np.uint8), "d.npy", 0, 9)
    assert out.dtype == np.int64 and out.tolist() == [0, 9]
    assert check_int(np.array([-5, 10**6]), "d.npy").tolist() == [-5, 10**6]
    with pytest.raises(DataError, match=r"d.npy: row 1: value 10; expected an integer in \[0, 9\]"):
        check_int(np.array([0, 10, 11]), "d.npy", 0, 9)
    with pytest.raises(DataError, match=r"d.npy: row 0: value -1; expected an integer in \[0, None\]"):
        check_int(np.array([-1]), "d.npy", 0)
    with pytest.raises(DataError, match=r"row 0: value 3; expected an integer in \[None, 2\]"):
        check_int(np.array([3]), "d.npy", hi=2)
    for bad in (np.zeros(2), np.zeros((2, 1), int)):
        with pytest.raises(DataError, match=r"d.npy: array of dtype .*, shape .*; expected \(n,\) integers"):
            check_int(bad, "d.npy")


def test_spoken_rows_share_one_utterance_per_content():
    a = np.ones((3, 13), np.float64)
    b = np.zeros((2, 13), np.float32)
    utts, row_audio = check_spoken(objects(a, b, a, a.copy(), np.ones((3, 13), np.int32)), "s.npy")
    assert row_audio.tolist() == [0, 1, 0, 0, 0] and row_audio.dtype == np.int64
    assert len(utts) == 2 and utts.lengths.tolist() == [3, 2] and utts.frames.dtype == np.float32
    assert np.array_equal(utts[1], b)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1.0] * 13, r"s.npy: row 1: list; expected a 2-D float array \(frames, 13\)"),
        (np.ones(13), r"s.npy: row 1: 1-D array of shape \(13,\); expected a 2-D float array \(frames, 13\)"),
        (np.ones((2, 12)), r"s.npy: row 1: shape \(2, 12\); expected 13 columns \(frames, 13\)"),
        (np.ones((0, 13)), r"s.npy: row 1: shape \(0, 13\) has no frames; expected >= 1 frame"),
        (np.ones((6, 13)), r"s.npy: row 1: 6 frames; expected at most 5 \(data.max_frames\)"),
        (np.full((2, 13), "x"), r"s.npy: row 1: dtype <U1; expected float MFCC values"),
    ],
)
def test_spoken_refuses_rows_naming_them(row, message):
    with pytest.raises(DataError, match=message):
        check_spoken(objects(np.ones((5, 13)), row), "s.npy", max_frames=5)


def test_spoken_needs_a_1d_object_array_of_finite_values():
    with pytest.raises(
        DataError, match=r"s.npy: array of dtype float64 and shape \(2, 13\); expected a 1-D object"
    ):
        check_spoken(np.ones((2, 13)), "s.npy")
    with pytest.raises(DataError, match=r"array of dtype object and shape \(1, 1\)"):
        check_spoken(np.empty((1, 1), object), "s.npy")
    bad = np.ones((4, 13))
    bad[2, 5] = np.nan
    with pytest.raises(DataError, match=r"s.npy: row 2, frame 2: non-finite MFCC value \(NaN/inf\)"):
        check_spoken(objects(np.ones((3, 13)), np.ones((3, 13)), bad), "s.npy")


def write_split(d: Path, split: str, n: int = 3, legacy: bool = False) -> None:
    np.save(d / f"written_{split}.npy", images(n))
    frames = np.arange(5 * 13, dtype=np.float32).reshape(5, 13)
    if legacy:
        rows = [frames[:2], frames[2:], frames[:2]][:n]
        np.save(d / f"spoken_{split}.npy", objects(*rows), allow_pickle=True)
    else:
        np.save(d / f"spoken_{split}_frames.npy", frames)
        np.save(d / f"spoken_{split}_lengths.npy", np.array([2, 3]))
        np.save(d / f"spoken_{split}_index.npy", np.array([1, 0, 1][:n]))
    np.save(d / f"match_{split}.npy", np.array([True, False, True][:n]))


def test_a_built_directory_loads(tmp_path):
    write_split(tmp_path, "train")
    write_split(tmp_path, "test")
    np.save(tmp_path / "digit_written_train.npy", np.array([3, 4, 5]))
    np.save(tmp_path / "digit_spoken_train.npy", np.array([3, 4, 5]))
    np.save(tmp_path / "speaker_spoken_train.npy", np.array([0, 7, 0]))
    (tmp_path / "manifest.json").write_text(json.dumps({"seed": 1}))
    data = load_challenge_dir(tmp_path)
    assert isinstance(data, ChallengeData) and data.manifest == {"seed": 1}
    assert data.train.row_audio.tolist() == [1, 0, 1] and data.train.utterances.lengths.tolist() == [2, 3]
    assert data.train.speaker.tolist() == [0, 7, 0] and data.train.has_digit_labels
    assert not data.test.has_digit_labels and not data.has_digit_labels
    assert data.split("test") is data.test and data.train.row_lengths.tolist() == [3, 2, 3]
    assert np.array_equal(data.train.spoken(1), np.arange(26, dtype=np.float32).reshape(2, 13))
    no_digits = load_challenge_dir(tmp_path, use_digit_labels=False)
    assert no_digits.train.digit_written is None and no_digits.train.speaker is not None


def test_the_original_files_load_and_test_labels_are_optional(tmp_path):
    write_split(tmp_path, "train", legacy=True)
    write_split(tmp_path, "test", n=2, legacy=True)
    (tmp_path / "match_test.npy").unlink()
    data = load_challenge_dir(tmp_path)
    assert (
        data.manifest is None and data.test.match is None and data.train.match.tolist() == [True, False, True]
    )
    assert data.train.row_audio.tolist() == [0, 1, 0] and len(data.test) == 2


def test_directories_that_cannot_be_loaded(tmp_path):
    with pytest.raises(
        DataError, match=r"nope: dataset directory not found; expected the challenge .npy files"
    ):
        load_challenge_dir(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(
        DataError, match=r"f: is a file; expected a directory holding the challenge .npy files"
    ):
        load_challenge_dir(tmp_path / "f")
    write_split(tmp_path, "train")
    write_split(tmp_path, "test")
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(DataError, match=r"manifest.json: corrupt JSON \("):
        load_challenge_dir(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "match_train.npy").unlink()
    with pytest.raises(DataError, match=r"match_train.npy: missing file"):
        load_challenge_dir(tmp_path)


def test_pickle_free_utterances_are_checked(tmp_path):
    write_split(tmp_path, "train")
    utts, index = load_utterances(tmp_path, "train", 3)
    assert isinstance(utts, Utterances) and index.tolist() == [1, 0, 1] and index.dtype == np.int64
    with pytest.raises(
        DataError, match=r"spoken_train_index.npy: 3 rows; expected 2 rows like .*written_train"
    ):
        load_utterances(tmp_path, "train", 2)
    with pytest.raises(
        DataError, match=r"spoken_train_lengths.npy: row 1: value 3; expected an integer in \[1, 2\]"
    ):
        load_utterances(tmp_path, "train", 3, max_frames=2)
    np.save(tmp_path / "spoken_train_index.npy", np.array([1, 0, 2]))
    with pytest.raises(
        DataError, match=r"spoken_train_index.npy: row 2: value 2; expected an integer in \[0, 1\]"
    ):
        load_utterances(tmp_path, "train", 3)
    np.save(tmp_path / "spoken_train_index.npy", np.array([1, 0, 1]))
    np.save(tmp_path / "spoken_train_lengths.npy", np.array([2, 2]))
    with pytest.raises(
        DataError, match=r"spoken_train_lengths.npy: lengths add up to 4 frames; .*frames.npy has 5"
    ):
        load_utterances(tmp_path, "train", 3)
    for frames in (np.zeros((5, 12), np.float32), np.zeros((5, 13), np.int32), np.zeros(65, np.float32)):
        np.save(tmp_path / "spoken_train_frames.npy", frames)
        with pytest.raises(
            DataError, match=r"spoken_train_frames.npy: .* array of shape .*; expected float \(F, 13\)"
        ):
            load_utterances(tmp_path, "train", 3)
    bad = np.zeros((5, 13), np.float32)
    bad[3, 0] = np.inf  # utterance 1 (frames 2-4), first used by row 0
    np.save(tmp_path / "spoken_train_frames.npy", bad)
    np.save(tmp_path / "spoken_train_lengths.npy", np.array([2, 3]))
    with pytest.raises(DataError, match=r"spoken_train_frames.npy: row 0, frame 1: non-finite MFCC value"):
        load_utterances(tmp_path, "train", 3)
