"""The task objects on tiny tensors and arrays: logits, loss, probabilities, decisions, metrics, row selection
and run names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdigits.errors import DataError
from mmdigits.tasks import TASKS, SplitPart, get_task


def part(**kwargs) -> SplitPart:
    """Six rows over utterances 0..3 (digits 3, 5, 3, 7): images show 3 5 3 7 5 3."""
    base = {
        "rows": np.arange(6),
        "audio": np.array([0, 1, 2, 3, 1, 0]),
        "match": np.array([True, False, True, True, False, False]),
        "image_digit": np.array([3, 5, 3, 7, 5, 3]),
        "audio_digit": np.array([3, 5, 3, 7]),
        "source": np.array([10, 11, 10, 12, 13, 14]),
        "rng": np.random.default_rng(0),
        "where": "train",
    }
    return SplitPart(**{**base, **kwargs})


def test_the_registry_holds_the_four_tasks():
    assert set(TASKS) == {"match", "digit", "image_digit", "audio_digit"}
    with pytest.raises(DataError, match=r"task='nope'; expected one of \('match'"):
        get_task("nope")


def test_binary_and_digit_logits_and_probabilities():
    match, digit = get_task("match"), get_task("digit")
    raw = torch.tensor([[0.5], [-1.0]], dtype=torch.float16)
    assert match.logits(raw).dtype == torch.float32 and match.logits(raw).shape == (2,)
    assert digit.logits(torch.zeros(2, 10, dtype=torch.float16)).shape == (2, 10)
    assert digit.logits(torch.zeros(2, 10, dtype=torch.float16)).dtype == torch.float32
    assert torch.allclose(match.proba(torch.tensor([0.0, 2.0])), torch.sigmoid(torch.tensor([0.0, 2.0])))
    logits = torch.tensor([[0.0, 1.0] + [0.0] * 8])
    assert torch.allclose(digit.proba(logits), logits.softmax(-1))


def test_decisions_from_logits_and_from_probabilities():
    match, digit = get_task("match"), get_task("digit")
    assert match.labels(torch.tensor([-0.1, 0.0, 0.2])).tolist() == [0, 0, 1]
    assert match.labels(torch.tensor([0.4, 0.5, 0.6]), is_proba=True).tolist() == [0, 0, 1]
    assert match.labels(torch.tensor([0.4])).dtype == torch.int64
    assert digit.labels(torch.tensor([[0.1, 0.7, 0.2] + [0.0] * 7])).tolist() == [1]
    assert match.submission(torch.tensor([0.2, 0.9])).tolist() == [False, True]
    assert match.submission(torch.tensor([0.2, 0.9])).dtype == bool
    proba = torch.zeros(2, 10)
    proba[0, 4], proba[1, 9] = 1.0, 1.0
    assert digit.submission(proba).tolist() == [4, 9]


def test_summaries_for_people():
    assert get_task("match").summary(torch.tensor(0.25)) == {"match_probability": 0.25}
    proba = torch.full((10,), 0.05)
    proba[6] = 0.55
    out = get_task("digit").summary(proba)
    assert out["digit"] == 6 and out["digit_probability"] == pytest.approx(0.55)


def test_loss_and_label_smoothing():
    match, digit = get_task("match"), get_task("digit")
    logits, target = torch.tensor([1.0, -2.0]), torch.tensor([1, 0])
    plain = F.binary_cross_entropy_with_logits(logits, target.float())
    assert match.loss(logits, target) == pytest.approx(float(plain))
    soft = torch.tensor([0.95, 0.05])  # 10 % moved to a uniform guess of 1/2
    assert match.loss(logits, target, 0.1) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, soft))
    )
    d_logits, d_target = torch.tensor([[2.0, 0.5] + [0.0] * 8]), torch.tensor([0])
    assert digit.loss(d_logits, d_target, 0.2) == pytest.approx(
        float(F.cross_entropy(d_logits, d_target, label_smoothing=0.2))
    )


def test_mean_logits_average_the_probabilities():
    match, digit = get_task("match"), get_task("digit")
    views = [torch.tensor([0.0, 4.0]), torch.tensor([2.0, -4.0])]
    mean_p = (torch.sigmoid(views[0]) + torch.sigmoid(views[1])) / 2
    assert torch.allclose(torch.sigmoid(match.mean_logits(views)), mean_p, atol=1e-6)
    # a probability of exactly 0 or 1 stays finite
    assert torch.isfinite(match.mean_logits([torch.tensor([200.0, -200.0])])).all()
    d_views = [torch.randn(3, 10, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    mean_d = (d_views[0].softmax(-1) + d_views[1].softmax(-1)) / 2
    assert torch.allclose(digit.mean_logits(d_views).softmax(-1), mean_d, atol=1e-6)
    assert torch.isfinite(digit.mean_logits([torch.tensor([[1000.0] + [0.0] * 9])])).all()
    assert digit.mean_logits([torch.tensor([[1000.0] + [0.0] * 9])])[0, 1] == pytest.approx(np.log(1e-12))


def test_metrics_and_confusion_matrices():
    match, digit = get_task("match"), get_task("digit")
    assert set(match.metrics().keys()) == {"acc", "f1", "auroc", "ece"}
    assert set(digit.metrics().keys()) == {"acc", "f1", "ece"}
    m = digit.metrics()  # probabilities, as the module passes them (the calibration error needs them)
    m.update(F.one_hot(torch.tensor([1, 1, 2, 2]), 10).float(), torch.tensor([1, 1, 1, 2]))
    out = m.compute()
    assert float(out["acc"]) == pytest.approx(0.75)  # micro: 3 of 4 right
    assert float(out["f1"]) == pytest.approx((0.8 + 2 / 3) / 2)  # macro over the digits present
    assert float(out["ece"]) == pytest.approx(0.25)  # all sure, 3 of 4 right
    cm = match.confusion_matrix()
    cm.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 1]))
    assert cm.compute().tolist() == [[0, 0], [1, 1]]
    dcm = digit.confusion_matrix()
    dcm.update(torch.tensor([9]), torch.tensor([9]))
    assert dcm.compute().shape == (10, 10) and int(dcm.compute()[9, 9]) == 1


def test_match_selects_every_row_with_its_match_label():
    rows, audio, target = get_task("match").select(part())
    assert rows.tolist() == list(range(6)) and audio.tolist() == [0, 1, 2, 3, 1, 0]
    assert target.tolist() == [1, 0, 1, 1, 0, 0] and target.dtype == np.float32
    assert get_task("match").select(part(match=None))[2] is None


def test_digit_matched_pairs_keep_the_matching_rows():
    rows, audio, target = get_task("digit").select(part(pairing="matched"))
    assert rows.tolist() == [0, 2, 3] and audio.tolist() == [0, 2, 3] and target.tolist() == [3, 3, 7]
    with pytest.raises(DataError, match="train: digit_pairing='matched' needs the match labels"):
        get_task("digit").select(part(pairing="matched", match=None))


def test_digit_repair_draws_a_same_digit_utterance_for_every_image():
    p = part(rng=np.random.default_rng(3))
    rows, audio, target = get_task("digit").select(p)
    assert rows.tolist() == list(range(6)) and target.tolist() == [3, 5, 3, 7, 5, 3]
    assert (p.audio_digit[audio] == target).all()
    # both utterances of digit 3 get drawn over many images
    many = part(
        rows=np.arange(40), audio=np.zeros(40, int), image_digit=np.full(40, 3), source=None, match=None
    )
    many.audio = np.array([0, 2] * 20)
    drawn = get_task("digit").select(many)[1]
    assert set(drawn.tolist()) == {0, 2}
    assert abs(int((drawn == 0).sum()) - 20) < 12


def test_digit_repair_without_rows_and_without_utterances_of_a_digit():
    empty = part(rows=np.zeros(0, np.int64), audio=np.zeros(0, np.int64))
    empty.audio_digit = np.array([3])
    rows, audio, _ = get_task("digit").select(empty)
    assert rows.tolist() == [] and audio.tolist() == []
    lacking = part(audio=np.array([0, 1, 2, 0, 1, 0]))  # no utterance of digit 7 in this part
    with pytest.raises(DataError, match="train: lacks utterances for some image digits"):
        get_task("digit").select(lacking)


def test_image_and_audio_digits_take_each_source_once_in_order():
    rows, audio, target = get_task("image_digit").select(part())
    assert rows.tolist() == [0, 1, 3, 4, 5] and audio.tolist() == [0, 1, 3, 1, 0]
    assert target.tolist() == [3, 5, 7, 5, 3]
    assert get_task("image_digit").select(part(source=None))[0].tolist() == list(range(6))
    rows, audio, target = get_task("audio_digit").select(part())
    assert (
        rows.tolist() == [0, 1, 2, 3] and audio.tolist() == [0, 1, 2, 3] and target.tolist() == [3, 5, 3, 7]
    )
    shuffled = part(rows=np.array([5, 4, 3, 2, 1, 0]), audio=np.array([3, 1, 3, 0, 1, 2]))
    rows, audio, _ = get_task("audio_digit").select(shuffled)
    assert rows.tolist() == [5, 4, 2, 0] and audio.tolist() == [3, 1, 0, 2]


def test_run_names_leave_out_what_the_task_does_not_read():
    assert get_task("match").run_name("cnn", "lenet", "concat") == "match_cnn_lenet_concat"
    assert get_task("digit").run_name("cnn", None, "late") == "digit_cnn_late"
    assert get_task("image_digit").run_name("cnn", "lenet", "concat") == "image_digit_lenet"
    assert get_task("audio_digit").run_name("cnn", "lenet", "concat") == "audio_digit_cnn"
    assert get_task("match").run_name(None, None, None) == "match"
    assert get_task("match").num_outputs == 1 and get_task("digit").num_outputs == 10
    assert get_task("match").class_names == ["no match", "match"]
    assert get_task("digit").class_names == [str(d) for d in range(10)]


def test_digit_repair_picks_the_drawn_share_of_the_digits_utterances_in_bank_order():
    # 60 utterances (digits 0..9 in a shuffled bank order), 200 images: each image gets utterance number
    # floor(u * count) among its digit's utterances, u the part's next uniform draw
    bank_digit = np.random.default_rng(1).permutation(np.arange(60) % 10)
    image_digit = np.random.default_rng(2).integers(0, 10, 200)
    p = part(
        rows=np.arange(200),
        audio=np.arange(200) % 60,
        image_digit=image_digit,
        audio_digit=bank_digit,
        source=None,
        match=None,
        rng=np.random.default_rng(9),
    )
    _, audio, _ = get_task("digit").select(p)
    u = np.random.default_rng(9).random(200)
    expected = [np.flatnonzero(bank_digit == d)[int(x * 6)] for d, x in zip(image_digit, u)]
    assert audio.tolist() == expected


def test_a_new_task_class_registers_itself_by_name():
    from mmdigits.tasks import Task

    class ProbeTask(Task):
        name = "probe"

    try:
        assert Task.registry["probe"] is ProbeTask
        assert isinstance(get_task("probe"), ProbeTask)
    finally:
        del Task.registry["probe"]
