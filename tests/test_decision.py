"""best_logit_shift: the validation-tuned decision point of binary tasks, on a handful of logits."""

from __future__ import annotations

import pytest
import torch

from mmdigits.models.decision import best_logit_shift

GRID = torch.linspace(-8.0, 8.0, 321)  # the candidate shifts: [-8, 8] in steps of 0.05


def shift(logits: list[float], target: list[bool], current: float = 0.0) -> float | None:
    out = best_logit_shift(torch.tensor(logits), torch.tensor(target), torch.tensor(current))
    return None if out is None else float(out)


@pytest.mark.parametrize("target", [[True, True, True], [False, False, False]])
def test_one_class_has_nothing_to_tune(target):
    assert shift([-1.0, 0.5, 2.0], target) is None


def test_the_middle_of_the_shifts_that_separate_the_classes():
    # positives need a shift above -0.52, negatives one of at most 2.48: grid points -0.50 ... 2.45 (60)
    assert shift([0.52, 0.6, -2.48, -3.0], [True, True, False, False]) == pytest.approx(1.0, abs=1e-4)
    # the candidates are one grid: a wider gap moves the middle, the answer stays on the grid
    assert shift([4.02, -2.48], [True, False]) == pytest.approx(-0.75, abs=1e-4)


def test_the_best_accuracy_wins_over_a_wider_range():
    # all right only for shifts in (-1.52, 1.02]: grid points -1.50 ... 1.00 (51); every larger shift up to 8
    # gets 3 of 4 right, a wider range of lower accuracy
    logits = [1.52, -1.02, -1.02, -1.02]
    assert shift(logits, [True, False, False, False]) == pytest.approx(-0.25, abs=1e-4)


def test_the_current_shift_is_already_in_the_logits():
    logits, target = [0.52, 0.6, -2.48, -3.0], [True, True, False, False]
    plain = shift(logits, target)
    assert shift([x + 1.0 for x in logits], target, current=1.0) == pytest.approx(plain, abs=1e-4)
    assert shift([x - 2.0 for x in logits], target, current=-2.0) == pytest.approx(plain, abs=1e-4)


def test_a_logit_on_the_boundary_counts_as_negative():
    # shifted logit exactly 0 decides "no": the negative at -GRID[k] is right only for shifts up to GRID[k]
    k = 170
    negative = -float(GRID[k])
    best = shift([negative, 5.0], [False, True])
    # right for all grid shifts from index 61 (just above -5) up to k, inclusive: the middle one
    first = int(torch.nonzero(GRID > -5.0)[0])
    assert best == pytest.approx(float(GRID[first + (k - first + 1) // 2]), abs=1e-6)


def test_no_gradient_flows_back():
    logits = torch.tensor([0.52, -2.48], requires_grad=True)
    out = best_logit_shift(logits, torch.tensor([True, False]), torch.tensor(0.0))
    assert out is not None and not out.requires_grad


def test_no_shift_helps_a_model_wrong_at_every_shift():
    # confidently wrong beyond the grid: every candidate gets nothing right, so all tie; the middle one, 0
    assert shift([-20.0, -30.0, 25.0], [True, True, False]) == pytest.approx(0.0, abs=1e-6)
