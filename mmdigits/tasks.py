"""What each task means, in one place: its outputs, loss, probabilities, decisions, metrics, and which
modalities, rows and labels of a challenge split it reads.

The module, the datamodule, predict, report, embed and robustness ask the task object; none of them
compares task names. Adding a task is one subclass here (it registers itself by ``name``) and one YAML under
``conf/task/`` that sets ``data.task: <name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryCalibrationError,
    BinaryConfusionMatrix,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from mmdigits.errors import DataError

N_DIGITS = 10
MODALITIES = ("image", "audio")  # the order of features everywhere (encoders, fusion inputs)


@dataclass
class SplitPart:
    """The candidate rows of one part of a split (train, val or test), for :meth:`Task.select`.

    ``rows``: row indices into the split; ``audio``: the utterance (bank index) of each candidate row.
    ``match``, ``image_digit``, ``source``: per split row; ``audio_digit``: per utterance (None when absent).
    ``rng`` draws anything random (seeded by the datamodule), ``where`` names the data in errors.
    """

    rows: np.ndarray
    audio: np.ndarray
    match: np.ndarray | None
    image_digit: np.ndarray | None
    audio_digit: np.ndarray | None
    source: np.ndarray | None
    rng: np.random.Generator
    where: str
    pairing: str = "repair"


class Task:
    """Base class; subclasses set the class attributes and :meth:`select`."""

    name: ClassVar[str]
    binary: ClassVar[bool] = False  # one logit (match / no match) rather than one per digit
    modalities: ClassVar[tuple[str, ...]] = MODALITIES
    needs_digit_labels: ClassVar[bool] = True
    test_label_file: ClassVar[str] = "digit_written_test.npy"  # present when the test split can be scored
    registry: ClassVar[dict[str, type[Task]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Task.registry[cls.name] = cls

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else N_DIGITS

    @property
    def class_names(self) -> list[str]:
        return ["no match", "match"] if self.binary else [str(d) for d in range(N_DIGITS)]

    # ------------------------------------------------------------------ logits -> answers
    def logits(self, raw: Tensor) -> Tensor:
        """The fusion's (B, num_outputs) output as this task's logits, in float32: (B,) or (B, 10)."""
        return raw.squeeze(-1).float() if self.binary else raw.float()

    def loss(self, logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
        """Cross-entropy; ``smoothing`` moves that share of each target to a uniform guess."""
        if self.binary:
            soft = target.float() * (1 - smoothing) + smoothing / 2
            return F.binary_cross_entropy_with_logits(logits, soft)
        return F.cross_entropy(logits, target, label_smoothing=smoothing)

    def mean_logits(self, views: list[Tensor]) -> Tensor:
        """Logits whose probabilities are the mean of the ``views``' probabilities."""
        p = torch.stack([self.proba(v) for v in views]).mean(0)
        return torch.logit(p, eps=1e-7) if self.binary else p.clamp_min(1e-12).log()

    def proba(self, logits: Tensor) -> Tensor:
        """P(match) (B,) or the digit posterior (B, 10)."""
        return torch.sigmoid(logits) if self.binary else logits.softmax(-1)

    def labels(self, logits_or_proba: Tensor, is_proba: bool = False) -> Tensor:
        """Decisions: 0/1 (match) or the digit, as int64."""
        if self.binary:
            return (logits_or_proba > (0.5 if is_proba else 0.0)).long()
        return logits_or_proba.argmax(-1)

    def prediction_rows(self, index: Tensor, target: Tensor, proba: Tensor) -> Tensor:
        """(B, 4) float64: index, target, decision, and P(match) or the decided digit's probability."""
        decision = self.labels(proba, is_proba=True)
        p = proba if self.binary else proba.gather(-1, decision[:, None]).squeeze(-1)
        return torch.stack([index.double(), target.double(), decision.double(), p.double()], dim=1)

    def submission(self, proba: Tensor) -> np.ndarray:
        """The challenge's result array: one bool per pair (match) or one digit per pair."""
        decided = self.labels(proba, is_proba=True).numpy()
        return decided.astype(bool) if self.binary else decided

    def summary(self, proba: Tensor) -> dict[str, Any]:
        """One pair's answer, for people: ``match_probability`` or ``digit`` and ``digit_probability``."""
        if self.binary:
            return {"match_probability": float(proba)}
        return {"digit": int(proba.argmax()), "digit_probability": float(proba.max())}

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> MetricCollection:
        if self.binary:
            return MetricCollection(
                {
                    "acc": BinaryAccuracy(),
                    "f1": BinaryF1Score(),
                    "auroc": BinaryAUROC(),
                    "ece": BinaryCalibrationError(),
                }
            )
        return MetricCollection(  # ece: expected calibration error of the probabilities (15 bins, L1)
            {
                "acc": MulticlassAccuracy(N_DIGITS, average="micro"),
                "f1": MulticlassF1Score(N_DIGITS, average="macro"),
                "ece": MulticlassCalibrationError(N_DIGITS),
            }
        )

    def confusion_matrix(self) -> Metric:
        return BinaryConfusionMatrix() if self.binary else MulticlassConfusionMatrix(N_DIGITS)

    # ------------------------------------------------------------------ data
    def select(self, part: SplitPart) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(rows, utterance of each row, target of each row or None without labels)."""
        raise NotImplementedError

    def run_name(self, audio_encoder: str | None, image_encoder: str | None, fusion: str | None) -> str:
        """A run's name from the choices it was made of, leaving out encoders this task does not read."""
        parts = [self.name]
        parts += [audio_encoder] if "audio" in self.modalities and audio_encoder else []
        parts += [image_encoder] if "image" in self.modalities and image_encoder else []
        parts += [fusion] if len(self.modalities) > 1 and fusion else []
        return "_".join(str(p) for p in parts)


class MatchTask(Task):
    """Do the image and the recording show the same digit? (the original challenge)"""

    name = "match"
    binary = True
    needs_digit_labels = False
    test_label_file = "match_test.npy"

    def select(self, part: SplitPart) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        target = None if part.match is None else part.match[part.rows].astype(np.float32)
        return part.rows, part.audio, target


class DigitTask(Task):
    """Which digit does the fused pair show? Pairs show one digit: ``pairing='matched'`` keeps the matching
    pairs, ``'repair'`` gives every image a same-digit utterance drawn from the same part of the split."""

    name = "digit"

    def select(self, part: SplitPart) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rows, audio = part.rows, part.audio
        if part.pairing == "matched":
            if part.match is None:
                raise DataError(f"{part.where}: digit_pairing='matched' needs the match labels")
            keep = part.match[rows]
            rows, audio = rows[keep], audio[keep]
        else:
            audio = self._repair(part)
        return rows, audio, part.image_digit[rows]  # type: ignore[index]

    @staticmethod
    def _repair(part: SplitPart) -> np.ndarray:
        pool = np.unique(part.audio)
        pool_digit = part.audio_digit[pool]  # type: ignore[index]
        order = np.argsort(pool_digit, kind="stable")
        counts = np.bincount(pool_digit, minlength=N_DIGITS)
        d = part.image_digit[part.rows]  # type: ignore[index]
        if not len(d):
            return part.audio
        if (counts[np.unique(d)] == 0).any():
            raise DataError(f"{part.where}: lacks utterances for some image digits")
        starts = np.cumsum(counts) - counts
        pick = np.minimum((part.rng.random(len(d)) * counts[d]).astype(np.int64), counts[d] - 1)
        return pool[order[starts[d] + pick]]


class ImageDigitTask(Task):
    """The digit of the image alone (each source image once)."""

    name = "image_digit"
    modalities = ("image",)

    def select(self, part: SplitPart) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rows, audio = part.rows, part.audio
        if part.source is not None:
            _, first = np.unique(part.source[rows], return_index=True)
            keep = np.sort(first)
            rows, audio = rows[keep], audio[keep]
        return rows, audio, part.image_digit[rows]  # type: ignore[index]


class AudioDigitTask(Task):
    """The digit of the recording alone (each utterance once)."""

    name = "audio_digit"
    modalities = ("audio",)
    test_label_file = "digit_spoken_test.npy"

    def select(self, part: SplitPart) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        _, first = np.unique(part.audio, return_index=True)
        keep = np.sort(first)
        audio = part.audio[keep]
        return part.rows[keep], audio, part.audio_digit[audio]  # type: ignore[index]


TASKS = tuple(Task.registry)


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError naming the choices otherwise."""
    if name not in Task.registry:
        raise DataError(f"task={name!r}; expected one of {TASKS}")
    return Task.registry[name]()
