"""Temperature scaling (Guo et al. 2017) and the expected calibration error of a model's probabilities.

``fit_temperature(logits, targets)`` finds the T > 0 that minimises the NLL of ``logits / T`` (LBFGS over
log T); it changes no decision (argmax, or the sign of a binary logit), only how sure the model says it is.
``calibration_report(model, datamodule)`` fits T on the model's validation part and reports accuracy, NLL
and expected calibration error (torchmetrics, 15 bins) before and after scaling, on validation and test:
``python -m mmdigits.evaluate ckpt_path=<expert>.ckpt calibrate=true`` (``calibration`` in metrics.json).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from mmdigits.errors import MMDigitsError


def nll(logits: Tensor, targets: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Mean negative log-likelihood of ``logits / temperature``: (N,) binary logits or (N, C) class logits."""
    scaled = logits.double() / temperature
    if scaled.ndim == 1:
        return F.binary_cross_entropy_with_logits(scaled, targets.double())
    return F.cross_entropy(scaled, targets.long())


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising ``nll(logits / T, targets)`` (1.0 for no logits)."""
    logits, targets = logits.detach().double(), targets.detach()
    if not len(logits):
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nll(logits, targets, log_t.exp())
        loss.backward()
        return loss

    opt.step(closure)  # validation it separates perfectly drives T towards 0: kept within [0.01, 100]
    return float(log_t.detach().exp().clamp(1e-2, 1e2))


def expected_calibration_error(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, n_bins: int = 15
) -> float:
    """ECE (L1, ``n_bins`` equal-width confidence bins) of the probabilities of ``logits / temperature``."""
    scaled = logits.double() / temperature
    if scaled.ndim == 1:
        return float(BinaryCalibrationError(n_bins=n_bins)(scaled.sigmoid().float(), targets.long()))
    metric = MulticlassCalibrationError(scaled.shape[-1], n_bins=n_bins)
    return float(metric(scaled.softmax(-1).float(), targets.long()))


def accuracy(logits: Tensor, targets: Tensor) -> float:
    decisions = (logits > 0).long() if logits.ndim == 1 else logits.argmax(-1)
    return float((decisions == targets.long()).double().mean())


@torch.no_grad()
def collect_logits(model: Any, loader: Any) -> tuple[Tensor, Tensor]:
    """The model's decision logits (as it tests and predicts) and the targets of every batch of ``loader``."""
    model.eval()
    logits, targets = [], []
    for batch in loader:
        batch = {k: v.to(model.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        logits.append(model(batch).float().cpu())
        targets.append(batch["target"].cpu())
    if not logits:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def scores(logits: Tensor, targets: Tensor, temperature: float) -> dict[str, float]:
    """Accuracy, and NLL and ECE before and after dividing the logits by ``temperature``."""
    return {
        "acc": accuracy(logits, targets),
        "nll": float(nll(logits, targets)),
        "ece": expected_calibration_error(logits, targets),
        "nll_scaled": float(nll(logits, targets, temperature)),
        "ece_scaled": expected_calibration_error(logits, targets, temperature),
    }


def calibration_report(model: Any, datamodule: Any) -> dict[str, Any]:
    """T fitted on the validation part of ``datamodule`` (the model's own), and ``scores`` there and on the
    test split (when it has labels)."""
    val = datamodule.val_dataloader()
    if not val:
        raise MMDigitsError(
            "calibrate=true: data.val_fraction leaves no validation part to fit the temperature on"
        )
    val_logits, val_targets = collect_logits(model, val)
    temperature = fit_temperature(val_logits, val_targets)
    report: dict[str, Any] = {"temperature": temperature, "val": scores(val_logits, val_targets, temperature)}
    if datamodule.has_test_labels:
        report["test"] = scores(*collect_logits(model, datamodule.test_dataloader()), temperature)
    return report
