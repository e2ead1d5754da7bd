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
from mmdigits.data.challenge import MAX_FRAMES, ChallengeData, load_challenge_dir
from mmdigits.data.dataset import BatchDataset, SplitTensors
from mmdigits.data.samplers import SAMPLERS, EvalBatchSampler, TrainBatchSampler
from mmdigits.data.splits import split_train_val
from mmdigits.errors import DataError
from mmdigits.tasks import SplitPart, get_task

log = logging.getLogger(__name__)


def train_pos_rate(dm: Any) -> float:
    """Positive rate the model sees in training batches (0.5 under a balanced sampler)."""
    rate = getattr(dm, "train_pos_rate", None)
    if rate is not None:
        return float(rate)
    return 0.5 if getattr(dm, "sampler", "none") != "none" else float(dm.pos_rate)


def data_info(dm: Any) -> dict[str, Any]:
    """What a checkpoint must know about its training data: the audio corpus, the MFCC settings for raw wavs
    (FSDD builds only; None for precomputed Arabic/challenge MFCC) and the build settings."""
    data = getattr(dm, "data", None)
    manifest = getattr(data, "manifest", None) or {}
    settings = manifest.get("settings") or {}
    return {
        "audio": settings.get("audio", getattr(dm, "audio", None)),
        "mfcc": settings.get("mfcc"),
        "build": settings or None,
        "dir": str(getattr(dm, "dir", "")),
        "has_digit_labels": bool(getattr(dm, "has_digit_labels", False)),
    }


class MMDigitsDataModule(L.LightningDataModule):
    """Loads (auto-building if needed) a challenge directory and serves batches for one task.

    Attributes after ``setup("fit")``: ``stats`` (audio_mean/std (13,), image_mean/std () on the 0..1 scale,
    train part only), ``pos_rate``, ``has_digit_labels``, ``data`` (ChallengeData).
    ``audio=None`` takes the corpus of the complete build in ``dir`` (its manifest), Arabic when building.
    """

    def __init__(
        self,
        dir: str = "Dataset",
        raw_dir: str | None = None,
        audio: str | None = None,
        build: dict[str, Any] | None = None,
        split: str = "corpus",
        folds: int = 4,
        fold: int = 0,
        image_split: str = "mnist",
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
        max_frames: int = MAX_FRAMES,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.task = get_task(task)
        if sampler not in SAMPLERS:
            raise DataError(f"sampler={sampler!r}; expected one of {SAMPLERS}")
        if digit_pairing not in ("repair", "matched"):
            raise DataError(f"digit_pairing={digit_pairing!r}; expected 'repair' or 'matched'")
        if self.task.needs_digit_labels and not use_digit_labels:
            raise DataError(f"task={task!r} needs digit labels but use_digit_labels=false")
        self.dir, self.raw_dir, self.audio = Path(dir), raw_dir, audio
        self.build = dict(build or {})
        if split != "corpus":  # a fold of speaker-grouped cross-validation is a build setting of its own
            self.build.update(split=split, folds=folds, fold=fold)
        if image_split != "mnist":
            self.build.update(image_split=image_split)
        self.use_digit_labels = use_digit_labels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.sampler, self.pad_to = val_fraction, sampler, pad_to
        self.bucketing, self.bucket_batches = bucketing, bucket_batches
        self.digit_pairing, self.max_frames = digit_pairing, max_frames
        self.seed, self.num_workers = seed, num_workers
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
        return (self.dir / self.task.test_label_file).is_file()

    # ------------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        """Ensure ``dir`` holds a dataset: user-owned challenge files or a complete build (else build it).

        A complete build is never rebuilt into a different one: its manifest says what it is, and a request
        for something else (``audio``, ``build``) is an error naming both."""
        if self.dir.exists() and not self.dir.is_dir():
            raise DataError(f"{self.dir}: is a file; expected a directory for the dataset (data.dir)")
        m = read_manifest(self.dir)
        if m is None or not is_complete(self.dir, check_hashes=False):
            ensure_dataset(self.dir, self.raw_dir, audio=self.audio or "arabic", **self.build)
            return
        have = m.get("settings", {})
        if self.audio is not None and have.get("audio") != self.audio:
            raise DataError(
                f"{self.dir}: holds a complete {have.get('audio')!r} build (manifest.json), but this run "
                f"asks for data.audio={self.audio!r}; point data.dir at another directory, or leave "
                "data.audio unset"
            )
        if self.build:  # explicit settings: the same build, or an error naming both
            ensure_dataset(self.dir, self.raw_dir, audio=have.get("audio"), **self.build)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_challenge_dir(self.dir, self.use_digit_labels, self.max_frames)
            self.has_digit_labels = self.data.has_digit_labels
            if self.task.needs_digit_labels and not self.has_digit_labels:
                raise DataError(
                    f"{self.dir}: task={self.task.name!r} needs digit_written_*/digit_spoken_* label files, "
                    "which the original challenge files do not include (only the match task is "
                    "available); build the dataset from the raw corpora with `python -m mmdigits.data.build`"
                )
            self._tensors = {s: SplitTensors.from_split(self.data.split(s)) for s in ("train", "test")}
        if stage in (None, "fit", "validate") and self.train_set is None:
            self._setup_fit()
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._view("test", np.arange(len(self.data.test)), stream=3)

    def _setup_fit(self) -> None:
        assert self.data is not None
        train = self.data.train
        if not len(train):
            raise DataError(f"{self.dir / 'written_train.npy'}: the train split has no rows")
        self.parts = parts = split_train_val(train, self.val_fraction, self.seed)
        log.info(
            "validation: %d rows by %s (%d train rows left out: their image is in validation); shared with "
            "training: %s",
            len(parts.val),
            parts.by,
            parts.dropped,
            parts.shared,
        )
        if self.val_fraction > 0 and not len(parts.val):
            raise DataError(
                f"{self.dir / 'spoken_train.npy'}: the train split has {len(train)} rows of a single "
                f"{'speaker' if train.speaker is not None else 'utterance'}, too few to carve a validation "
                "split that shares none with training; give more data (or data.val_fraction=0 together with "
                "callbacks=none)"
            )
        self.train_set = self._view("train", parts.train, stream=1)
        self.val_set = self._view("train", parts.val, stream=2)
        target = self.train_set.target
        if self.task.binary and target is not None and len(target) and (target.all() or not target.any()):
            raise DataError(
                f"{self.dir / 'match_train.npy'}: every one of the {len(target)} training rows is "
                f"{'a match' if target.all() else 'not a match'}; the match task needs both kinds of pair"
            )
        if train.match is not None:
            self.pos_rate = float(train.match[parts.train].mean()) if len(parts.train) else 0.5
        t = self._tensors["train"]
        a_mean, a_std = t.audio_stats(self.train_set.aud.numpy())
        i_mean, i_std = t.image_stats(self.train_set.rows.numpy())
        self.stats = {"audio_mean": a_mean, "audio_std": a_std, "image_mean": i_mean, "image_std": i_std}

    def _view(self, split_name: str, rows: np.ndarray, stream: int) -> BatchDataset:
        """The task's rows within ``rows`` of a split."""
        assert self.data is not None
        sp, t = self.data.split(split_name), self._tensors[split_name]
        rows = np.asarray(rows, np.int64)
        part = SplitPart(
            rows=rows,
            audio=t.row_audio[rows],
            match=sp.match,
            image_digit=sp.digit_written if self.has_digit_labels else None,
            audio_digit=t.audio_digit if self.has_digit_labels else None,
            source=sp.source,
            rng=np.random.default_rng([self.seed, stream, 11]),
            where=f"{self.dir}: {split_name} part",
            pairing=self.digit_pairing,
        )
        rows, aud, target = self.task.select(part)
        image_digit = sp.digit_written[rows] if self.has_digit_labels else None  # type: ignore[index]
        audio_digit = t.audio_digit[aud] if self.has_digit_labels else None  # type: ignore[index]
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
        if mode != "none" and not self.task.binary:
            log.warning(
                "sampler=%r only applies to match labels; using 'none' for task %r", mode, self.task.name
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

    def _eval_loader(self, ds: BatchDataset | None, whole: bool = False) -> DataLoader:
        assert ds is not None
        lengths = ds.lengths if self.bucketing else None
        world = (1, 0) if whole else self._world()
        sampler = EvalBatchSampler(len(ds), self.eval_batch_size, *world, lengths=lengths)
        return self._loader(ds, sampler)

    def whole_test_dataloader(self) -> DataLoader:
        """The whole test split in this process (not this rank's shard): for analyses run on rank 0."""
        self.setup("test")
        return self._eval_loader(self.test_set, whole=True)

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
