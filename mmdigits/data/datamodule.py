"""LightningDataModule for the paired image/MFCC challenge data (batches per docs/interfaces.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mmdigits.data.build import ensure_dataset, is_complete, read_manifest
from mmdigits.data.challenge import ChallengeData, SplitData, load_challenge_dir
from mmdigits.data.dataset import BatchDataset, SplitTensors
from mmdigits.data.samplers import SAMPLERS, EvalBatchSampler, TrainBatchSampler
from mmdigits.errors import DataError

log = logging.getLogger(__name__)
TASKS = ("match", "digit", "image_digit", "audio_digit")


def split_train_val(split: SplitData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train part and the val part: by whole speakers when speaker ids exist (>= 2
    speakers), otherwise a seeded split stratified on the match label."""
    n = len(split)
    rng = np.random.default_rng([seed, 7])
    if val_fraction <= 0:
        return np.arange(n), np.zeros(0, np.int64)
    if split.speaker is not None and len(np.unique(split.speaker)) >= 2:
        speakers, counts = np.unique(split.speaker, return_counts=True)
        order = rng.permutation(len(speakers))
        cum = np.cumsum(counts[order])
        k = int(np.searchsorted(cum, val_fraction * n)) + 1
        k = min(max(k, 1), len(speakers) - 1)
        is_val = np.isin(split.speaker, speakers[order[:k]])
    else:
        strata = split.match if split.match is not None else np.zeros(n, bool)
        is_val = np.zeros(n, bool)
        for c in np.unique(strata):
            rows = rng.permutation(np.flatnonzero(strata == c))
            is_val[rows[: int(round(val_fraction * len(rows)))]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class MMDigitsDataModule(L.LightningDataModule):
    """Loads (auto-building if needed) a challenge directory and serves batches for one task.

    Attributes after ``setup("fit")``: ``stats`` (audio_mean/std (13,), image_mean/std () on the 0..1 scale,
    train part only), ``pos_rate``, ``has_digit_labels``, ``num_classes``, ``data`` (ChallengeData).
    """

    def __init__(
        self,
        dir: str = "Dataset",
        raw_dir: str | None = None,
        audio: str = "arabic",
        build: dict[str, Any] | None = None,
        task: str = "match",
        use_digit_labels: bool = True,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        sampler: str = "none",
        bucketing: bool = True,
        bucket_batches: int = 50,
        pad_to: int | None = None,
        digit_pairing: str = "repair",
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if task not in TASKS:
            raise DataError(f"task={task!r}; expected one of {TASKS}")
        if sampler not in SAMPLERS:
            raise DataError(f"sampler={sampler!r}; expected one of {SAMPLERS}")
        if digit_pairing not in ("repair", "matched"):
            raise DataError(f"digit_pairing={digit_pairing!r}; expected 'repair' or 'matched'")
        if task != "match" and not use_digit_labels:
            raise DataError(f"task={task!r} needs digit labels but use_digit_labels=false")
        self.dir, self.raw_dir, self.audio = Path(dir), raw_dir, audio
        self.build = dict(build or {})
        self.task, self.use_digit_labels = task, use_digit_labels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.sampler, self.bucketing, self.pad_to = (
            val_fraction,
            sampler,
            bucketing,
            pad_to,
        )
        self.digit_pairing, self.seed, self.num_workers = digit_pairing, seed, num_workers
        self.bucket_batches = bucket_batches
        self.num_classes = 1 if task == "match" else 10
        self.data: ChallengeData | None = None
        self.stats: dict[str, torch.Tensor] = {}
        self.pos_rate: float = 0.5
        self.has_digit_labels = False
        self.train_set: BatchDataset | None = None
        self.val_set: BatchDataset | None = None
        self.test_set: BatchDataset | None = None
        self._train_sampler: TrainBatchSampler | None = None
        self._sampler_epoch = 0

    @property
    def has_test_labels(self) -> bool:
        """Whether ``dir`` can score the test split for this task (original challenge files cannot)."""
        name = "match_test.npy" if self.task == "match" else "digit_written_test.npy"
        return (self.dir / name).is_file()

    # ------------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        """Ensure ``dir`` holds a dataset: user-owned challenge files or a complete build (else build)."""
        m = read_manifest(self.dir)
        if (
            not self.build
            and m is not None
            and m.get("settings", {}).get("audio") == self.audio
            and is_complete(self.dir, check_hashes=False)
        ):
            return  # no explicit build settings: any complete build of this audio corpus will do
        ensure_dataset(self.dir, self.raw_dir, audio=self.audio, **self.build)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_challenge_dir(self.dir, use_digit_labels=self.use_digit_labels)
            self.has_digit_labels = self.data.has_digit_labels
            if self.task != "match" and not self.has_digit_labels:
                raise DataError(
                    f"{self.dir}: task={self.task!r} needs digit_written_*/digit_spoken_* label files, "
                    "which the original challenge files do not include (only the match task is "
                    "available); build the dataset from the raw corpora with `python -m mmdigits.data.build`"
                )
            self._tensors = {s: SplitTensors.from_split(self.data.split(s)) for s in ("train", "test")}
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self.data.train
            tr, va = split_train_val(train, self.val_fraction, self.seed)
            self.train_set = self._view("train", tr, stream=1)
            self.val_set = self._view("train", va, stream=2)
            if train.match is not None:
                self.pos_rate = float(train.match[tr].mean()) if len(tr) else 0.5
            t = self._tensors["train"]
            aud = self.train_set.aud.numpy()
            a_mean, a_std = t.audio_stats(aud)
            i_mean, i_std = t.image_stats(self.train_set.rows.numpy())
            self.stats = {"audio_mean": a_mean, "audio_std": a_std, "image_mean": i_mean, "image_std": i_std}
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._view("test", np.arange(len(self.data.test)), stream=3)

    def _view(self, split_name: str, rows: np.ndarray, stream: int) -> BatchDataset:
        """The task's rows within ``rows`` of a split."""
        assert self.data is not None
        sp, t = self.data.split(split_name), self._tensors[split_name]
        rows = np.asarray(rows, np.int64)
        aud = t.row_audio[rows]
        dig = self.has_digit_labels
        if self.task == "match":
            target = None if sp.match is None else sp.match[rows].astype(np.float32)
        elif self.task == "digit" and self.digit_pairing == "matched":
            if sp.match is None:
                raise DataError(f"{self.dir}: digit_pairing='matched' needs match_{split_name}.npy")
            rows = rows[sp.match[rows]]
            aud = t.row_audio[rows]
        elif self.task == "digit":  # repair: a same-digit utterance from this part for every image
            rng = np.random.default_rng([self.seed, stream, 11])
            pool = np.unique(aud)
            pool_digit = t.bank_digit[pool]  # type: ignore[index]
            order = np.argsort(pool_digit, kind="stable")
            counts = np.bincount(pool_digit, minlength=10)
            d = sp.digit_written[rows]  # type: ignore[index]
            if len(rows) and (counts[np.unique(d)] == 0).any():
                raise DataError(f"{self.dir}: {split_name} part lacks utterances for some image digits")
            starts = np.cumsum(counts) - counts
            pick = np.minimum(
                (rng.random(len(rows)) * counts[d]).astype(np.int64), np.maximum(counts[d] - 1, 0)
            )
            aud = pool[order[starts[d] + pick]] if len(rows) else aud
        elif self.task == "image_digit":
            if sp.source is not None:
                _, first = np.unique(sp.source[rows], return_index=True)
                rows = rows[np.sort(first)]
                aud = t.row_audio[rows]
        else:  # audio_digit: unique utterances
            _, first = np.unique(aud, return_index=True)
            rows, aud = rows[np.sort(first)], aud[np.sort(first)]
        image_digit = sp.digit_written[rows] if dig else None  # type: ignore[index]
        audio_digit = t.bank_digit[aud] if dig else None  # type: ignore[index]
        if self.task in ("digit", "image_digit"):
            target = image_digit
        elif self.task == "audio_digit":
            target = audio_digit
        return BatchDataset(t, rows, aud, target, image_digit, audio_digit, self.pad_to)

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, ds: BatchDataset, sampler: Any) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def make_train_sampler(self, num_replicas: int = 1, rank: int = 0) -> TrainBatchSampler:
        assert self.train_set is not None, "call setup('fit') first"
        ds = self.train_set
        mode = self.sampler
        if mode != "none" and self.task != "match":
            log.warning(
                "sampler=%r only applies to the match task; using 'none' for task %r", mode, self.task
            )
            mode = "none"
        labels = ds.target.numpy() > 0.5 if mode != "none" and ds.target is not None else None
        return TrainBatchSampler(
            len(ds),
            self.batch_size,
            mode=mode,
            labels=labels,
            lengths=ds.lengths if self.bucketing else None,
            bucketing=self.bucketing,
            bucket_batches=self.bucket_batches,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        epoch = self.state_dict()["train_sampler_epoch"]
        self._train_sampler = self.make_train_sampler(*self._world())
        self._train_sampler.set_epoch(epoch)
        return self._loader(self.train_set, self._train_sampler)  # type: ignore[arg-type]

    def _eval_loader(self, ds: BatchDataset | None) -> DataLoader:
        assert ds is not None
        lengths = ds.lengths if self.bucketing else None
        sampler = EvalBatchSampler(len(ds), self.eval_batch_size, *self._world(), lengths=lengths)
        return self._loader(ds, sampler)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("fit")
        return self._eval_loader(self.val_set) if self.val_set is not None and len(self.val_set) else []

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        if self.test_set is None or self.test_set.target is None:
            raise DataError(f"{self.dir}: no labels for the test split (match_test.npy absent); use predict")
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """Test split (length-sorted batches when bucketing; ``index`` restores row order); batches lack
        ``target`` when labels are absent."""
        self.setup("predict")
        return self._eval_loader(self.test_set)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        epoch = self._train_sampler.epoch if self._train_sampler is not None else self._sampler_epoch
        return {"train_sampler_epoch": int(epoch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sampler_epoch = int(state_dict.get("train_sampler_epoch", 0))
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(self._sampler_epoch)
