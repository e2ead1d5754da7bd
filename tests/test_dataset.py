"""The batch builder and the in-memory split on a few hand-made utterances: padding, lengths, statistics and
the batch dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdigits.data.challenge import SplitData, Utterances
from mmdigits.data.dataset import BatchDataset, SplitTensors, make_batch, pad_utterances


def utterances() -> Utterances:
    """Three utterances of 2, 3 and 1 frames; frames 1..6, coefficient c adds 10 c."""
    frames = np.arange(1, 7, dtype=np.float32)[:, None] + np.arange(13, dtype=np.float32)[None, :] * 10
    return Utterances(frames, np.array([2, 3, 1], np.int64))


def split(digits: bool = True) -> SplitData:
    written = np.zeros((4, 784), np.uint8)
    written[0, :2] = 255
    written[1, 0] = 51
    return SplitData(
        written,
        utterances(),
        np.array([1, 0, 1, 1], np.int64),
        digit_spoken=np.array([7, 4, 7, 7]) if digits else None,
    )


def test_padding_to_the_longest_and_to_a_given_length():
    u = utterances()
    frames, offsets, lengths = (
        torch.from_numpy(u.frames),
        torch.from_numpy(u.offsets),
        torch.from_numpy(u.lengths),
    )
    audio, out_len = pad_utterances(frames, offsets, lengths)
    assert audio.shape == (3, 3, 13) and out_len.tolist() == [2, 3, 1]
    assert audio[:, :, 0].tolist() == [[1, 2, 0], [3, 4, 5], [6, 0, 0]]
    assert audio[1, 2, 12] == 125
    short, short_len = pad_utterances(frames, offsets, lengths, n_frames=2)
    assert short.shape == (3, 2, 13) and short_len.tolist() == [2, 2, 1]
    assert short[:, :, 0].tolist() == [[1, 2], [3, 4], [6, 0]]
    long, _ = pad_utterances(frames, offsets[:1], lengths[:1], n_frames=4)
    assert long[0, :, 0].tolist() == [1, 2, 0, 0]


def test_padding_without_frames_or_rows():
    empty, lengths = pad_utterances(
        torch.zeros(0, 13), torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    )
    assert empty.shape == (2, 0, 13) and lengths.tolist() == [0, 0]
    none, _ = pad_utterances(
        torch.ones(3, 13), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    )
    assert none.shape == (0, 1, 13)
    assert pad_utterances(
        torch.zeros(0, 13), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), 5
    )[0].shape == (1, 5, 13)


def test_make_batch_builds_the_contract():
    images = np.arange(2 * 784, dtype=np.uint8).reshape(2, 784)
    audio = (torch.ones(2, 3, 13), torch.tensor([3, 1]))
    b = make_batch(images, audio, target=torch.tensor([1.0, 0.0]), image_digit=None)
    assert set(b) == {"image", "audio", "lengths", "index", "target"}
    assert b["image"].shape == (2, 1, 28, 28) and b["image"].dtype == torch.float32
    assert b["image"][1, 0, 0, 0] == float(784 % 256)
    assert b["index"].tolist() == [0, 1] and b["lengths"].tolist() == [3, 1]
    only_audio = make_batch(audio=audio, index=torch.tensor([5, 9]))
    assert set(only_audio) == {"audio", "lengths", "index"} and only_audio["index"].tolist() == [5, 9]
    square = make_batch(np.zeros((3, 28, 28), np.uint8))
    assert set(square) == {"image", "index"} and square["index"].tolist() == [0, 1, 2]


def test_split_tensors_carry_the_digit_of_each_used_utterance():
    t = SplitTensors.from_split(split())
    assert t.audio_digit.tolist() == [4, 7, -1]  # utterance 2 is in no row
    assert t.offsets.tolist() == [0, 2, 5] and t.lengths.tolist() == [2, 3, 1]
    assert t.images.shape == (4, 784) and t.images.dtype == torch.uint8
    assert SplitTensors.from_split(split(digits=False)).audio_digit is None
    audio, lengths = t.audio(torch.tensor([2, 0]))
    assert audio[:, :, 0].tolist() == [[6, 0], [1, 2]] and lengths.tolist() == [1, 2]
    assert t.audio(torch.tensor([1]), n_frames=1)[0].shape == (1, 1, 13)


def test_audio_statistics_weigh_each_utterance_by_its_rows():
    t = SplitTensors.from_split(split())
    mean, std = t.audio_stats(np.array([0, 1, 1]))  # utterance 0 once, utterance 1 twice
    frames = np.array([1, 2, 3, 4, 5, 3, 4, 5], np.float64)
    assert mean.dtype == torch.float32 and mean.shape == (13,)
    assert mean[0] == pytest.approx(frames.mean()) and mean[3] == pytest.approx(frames.mean() + 30)
    assert std[0] == pytest.approx(frames.std(), rel=1e-5)
    const = SplitTensors.from_split(split())
    const.frames = torch.ones(6, 13)
    assert const.audio_stats(np.array([2]))[1][0] == pytest.approx(1e-6)  # no spread: floored, never 0


def test_image_statistics_are_exact_over_the_chosen_rows():
    t = SplitTensors.from_split(split())
    mean, std = t.image_stats(np.array([0, 1]))
    pixels = np.concatenate([np.r_[1.0, 1.0, np.zeros(782)], np.r_[0.2, np.zeros(783)]])
    assert mean.dtype == torch.float32 and mean == pytest.approx(pixels.mean(), rel=1e-6)
    assert std == pytest.approx(pixels.std(), rel=1e-5)
    _, flat = t.image_stats(np.array([2, 3]))
    assert flat == pytest.approx(1e-6)


def test_the_dataset_returns_whole_batches():
    t = SplitTensors.from_split(split())
    ds = BatchDataset(t, np.array([3, 0, 1]), np.array([1, 0, 2]), np.array([1.0, 0.0, 1.0], np.float32))
    assert len(ds) == 3 and ds.lengths.tolist() == [3, 2, 1]
    b = ds[torch.tensor([2, 0])]
    assert set(b) == {"image", "audio", "lengths", "index", "target"}
    assert b["index"].tolist() == [1, 3] and b["lengths"].tolist() == [1, 3]
    assert b["target"].tolist() == [1.0, 1.0] and b["image"][0, 0, 0, 0] == 51
    assert b["audio"].shape == (2, 3, 13)
    digits = BatchDataset(t, [0, 1], [0, 1], None, image_digit=[3, 5], audio_digit=[4, 7], pad_to=5)
    d = digits[[1]]
    assert set(d) == {"image", "audio", "lengths", "index", "image_digit", "audio_digit"}
    assert d["image_digit"].tolist() == [5] and d["audio_digit"].tolist() == [7]
    assert d["image_digit"].dtype == d["audio_digit"].dtype == torch.int64
    assert d["audio"].shape == (1, 5, 13) and d["index"].dtype == torch.int64


def test_padding_a_single_frame_reads_only_that_frame():
    audio, lengths = pad_utterances(torch.ones(1, 13), torch.tensor([0]), torch.tensor([1]), n_frames=3)
    assert audio[0, :, 0].tolist() == [1.0, 0.0, 0.0] and lengths.tolist() == [1]


def test_narrow_integer_inputs_come_out_as_int64():
    t = SplitTensors.from_split(split())
    i32 = np.int32
    ds = BatchDataset(
        t,
        np.array([0, 1], i32),
        np.array([0, 1], i32),
        None,
        image_digit=np.array([3, 5], i32),
        audio_digit=np.array([4, 7], i32),
    )
    b = ds[np.array([1], i32)]
    assert b["index"].dtype == b["image_digit"].dtype == b["audio_digit"].dtype == torch.int64


def test_image_statistics_without_white_pixels():
    mean, _ = SplitTensors.from_split(split()).image_stats(np.array([1]))  # one pixel of 51, no 255
    assert mean == pytest.approx(0.2 / 784, rel=1e-5)
