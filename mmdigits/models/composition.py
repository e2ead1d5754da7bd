"""Two unimodal digit experts composed into a match decision, with no training of their own.

Each expert names the digit of its own modality: ``p_img`` and ``p_aud`` are its softmax over 10 digits (for
the image expert with ``test_time_shifts``, the mean over the image and its shifts, as it tests). A pair
matches when the two name the same digit:

* ``soft``: P(match) = sum_k p_img(k) p_aud(k), decided at 0.5 (what an agreement fusion started from both
  experts computes before any training);
* ``calibrated``: the same after dividing each expert's logits by its temperature, fitted on the expert's
  own validation part (:func:`mmdigits.models.calibration.fit_temperature`);
* ``hard``: match when the two argmaxes agree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

RULES = ("soft", "calibrated", "hard")


def match_probability(
    img_logits: Tensor, aud_logits: Tensor, temperatures: Sequence[float] = (1.0, 1.0)
) -> Tensor:
    """sum_k p_img(k) p_aud(k), with p = softmax(logits / T) for each expert's temperature T: (N,)."""
    p_img = (img_logits.double() / temperatures[0]).softmax(-1)
    p_aud = (aud_logits.double() / temperatures[1]).softmax(-1)
    return (p_img * p_aud).sum(-1)


def compose(
    img_logits: Tensor, aud_logits: Tensor, temperatures: Sequence[float] = (1.0, 1.0)
) -> dict[str, Tensor]:
    """Each rule's match decisions (N,) bool, from the experts' digit logits (N, 10)."""
    return {
        "soft": match_probability(img_logits, aud_logits) >= 0.5,
        "calibrated": match_probability(img_logits, aud_logits, temperatures) >= 0.5,
        "hard": img_logits.argmax(-1) == aud_logits.argmax(-1),
    }


def binary_scores(decisions: Tensor, targets: Tensor) -> dict[str, Any]:
    """Accuracy, F1 of the positive (match) class, errors and pairs of boolean decisions."""
    decisions, targets = decisions.bool(), targets.bool()
    tp = int((decisions & targets).sum())
    fp, fn = int((decisions & ~targets).sum()), int((~decisions & targets).sum())
    errors, n = fp + fn, len(targets)
    return {
        "acc": 1.0 - errors / n if n else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "errors": errors,
        "n": n,
    }


@torch.no_grad()
def expert_logits(
    models: Sequence[Any], loader: Any, device: Any = "cpu"
) -> tuple[list[Tensor], Tensor, list[float]]:
    """Each model's logits on every batch of ``loader`` (one pass: every model sees the same batches), the
    batches' targets, and each model's seconds (its forward passes only, as ``test/pairs_per_s`` counts)."""
    for model in models:
        model.eval().to(device)
    logits: list[list[Tensor]] = [[] for _ in models]
    seconds = [0.0 for _ in models]
    targets = []
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        for i, model in enumerate(models):
            start = time.perf_counter()
            out = model(batch).float()
            if out.is_cuda:
                torch.cuda.synchronize()
            seconds[i] += time.perf_counter() - start
            logits[i].append(out.cpu())
        targets.append(batch["target"].cpu())
    return [torch.cat(lg) for lg in logits], torch.cat(targets), seconds


def composition_scores(
    img_logits: Tensor, aud_logits: Tensor, targets: Tensor, temperatures: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """``binary_scores`` of each rule of :func:`compose` against the match ``targets``."""
    return {
        rule: binary_scores(d, targets) for rule, d in compose(img_logits, aud_logits, temperatures).items()
    }
