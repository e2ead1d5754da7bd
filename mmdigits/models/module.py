"""One LightningModule for every task: match, digit, image_digit, audio_digit."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import CatMetric, MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from mmdigits.models.layers import lengths_to_mask

TASKS = ("match", "digit", "image_digit", "audio_digit")
N_DIGITS = 10
# buffers added after checkpoints were first written: loading an older checkpoint keeps their defaults
OPTIONAL_BUFFERS = ("val_logit_shift",)


def _as_container(cfg: Any) -> Any:
    """Hydra hands us DictConfigs; checkpoints hand us plain dicts. Accept both."""
    if cfg is None or isinstance(cfg, DictConfig):
        return cfg
    return OmegaConf.create(cfg)


def _train_pos_rate(dm: Any) -> float:
    """Positive rate the model sees in training batches (0.5 under a balanced sampler)."""
    rate = getattr(dm, "train_pos_rate", None)
    if rate is not None:
        return float(rate)
    return 0.5 if getattr(dm, "sampler", "none") != "none" else float(dm.pos_rate)


def data_info_from(dm: Any) -> dict[str, Any]:
    """What single-pair prediction needs to know about the training data: the audio corpus, the MFCC
    settings for raw wavs (FSDD builds only; None for precomputed Arabic/challenge MFCC) and the build."""
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


class MultimodalModule(LightningModule):
    """Encoders → fusion → logits, with the loss, metrics and optimiser for one task.

    Encoders and fusion are given as Hydra configs (``_target_`` dicts), not modules, so
    ``save_hyperparameters`` captures everything and ``load_from_checkpoint(path)`` alone
    rebuilds the model. Normalisation statistics and the class prior live in buffers, so they
    travel in the checkpoint's state dict too.
    """

    def __init__(
        self,
        task: str = "match",
        audio_encoder: Any = None,
        image_encoder: Any = None,
        fusion: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        aux_digit_weight: float = 0.0,
        balance_weight: float = 0.0,
        modality_dropout: float = 0.0,
        prior_correction: bool = True,
        audio_time_mask: int = 0,
        image_shift: int = 0,
        channels_last: bool = True,
        threshold_from_val: bool = False,
        data_info: dict | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"model.task must be one of {TASKS}, got {task!r}")
        self.save_hyperparameters(logger=False)
        self.task = task
        use_audio = task != "image_digit" and audio_encoder is not None
        use_image = task != "audio_digit" and image_encoder is not None
        if not (use_audio or use_image):
            raise ValueError(f"task {task!r} needs at least one encoder; got none")
        self.audio_encoder = instantiate(_as_container(audio_encoder)) if use_audio else None
        self.image_encoder = instantiate(_as_container(image_encoder)) if use_image else None
        # NHWC lets oneDNN pick its fast kernels for small convolutions (about 1.3x for LeNet on CPU)
        self.channels_last = channels_last and self.image_encoder is not None
        if self.channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)
        in_dims = [e.out_dim for e in (self.image_encoder, self.audio_encoder) if e is not None]
        self.num_outputs = 1 if task == "match" else N_DIGITS
        fusion_cfg = _as_container(fusion) or OmegaConf.create(
            {"_target_": "mmdigits.models.fusion.ConcatFusion"}
        )
        self.fusion = instantiate(fusion_cfg, in_dims=in_dims, out_dim=self.num_outputs)

        # Aux digit supervision: reuse the fusion's own per-modality heads when it has them
        # (late/agreement), otherwise add linear probes on the features.
        self.aux_heads = None
        if aux_digit_weight > 0 and not hasattr(self.fusion, "modality_logits"):
            self.aux_heads = nn.ModuleList(nn.Linear(d, N_DIGITS) for d in in_dims)

        self.register_buffer("audio_mean", torch.zeros(13))
        self.register_buffer("audio_std", torch.ones(13))
        self.register_buffer("image_mean", torch.tensor(0.0))
        self.register_buffer("image_std", torch.tensor(1.0))
        # logit offset that maps the training prior back to the data prior (balanced sampling)
        self.register_buffer("prior_logit_shift", torch.tensor(0.0))
        # further offset that maximises validation accuracy (threshold_from_val); 0 = decide at p = 0.5
        self.register_buffer("val_logit_shift", torch.tensor(0.0))

        self._build_metrics()

    # ------------------------------------------------------------------ metrics
    def _build_metrics(self) -> None:
        if self.task == "match":
            make = lambda: MetricCollection(  # noqa: E731
                {"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()}
            )
            self.test_confmat = BinaryConfusionMatrix()
        else:
            make = lambda: MetricCollection(  # noqa: E731
                {
                    "acc": MulticlassAccuracy(N_DIGITS, average="micro"),
                    "f1": MulticlassF1Score(N_DIGITS, average="macro"),
                }
            )
            self.test_confmat = MulticlassConfusionMatrix(N_DIGITS)
        self.train_metrics = make().clone(prefix="train/")
        self.val_metrics = make().clone(prefix="val/")
        self.test_metrics = make().clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume from checkpoint
        self.val_logits, self.val_targets = CatMetric(), CatMetric()  # for threshold_from_val
        self.aux_acc = nn.ModuleDict(
            {
                f"{stage}_{m}": MulticlassAccuracy(N_DIGITS, average="micro")
                for stage in ("val", "test")
                for m in ("image", "audio")
            }
        )

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and dm is not None and getattr(dm, "stats", None):
            self.set_normalization(dm.stats)
            if self.task == "match" and self.hparams.prior_correction:
                self.set_prior(dm.pos_rate, _train_pos_rate(dm))
            self.hparams["data_info"] = data_info_from(dm)  # saved with the checkpoint's hparams

    def set_normalization(self, stats: dict[str, Tensor]) -> None:
        for name in ("audio_mean", "audio_std", "image_mean", "image_std"):
            getattr(self, name).copy_(torch.as_tensor(stats[name], dtype=torch.float32))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in OPTIONAL_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def decision_shift(self) -> Tensor:
        """Added to match logits outside training: prior correction plus the validation-tuned offset."""
        return self.prior_logit_shift + self.val_logit_shift

    def set_prior(self, data_pos_rate: float, train_pos_rate: float) -> None:
        def logit(p: float) -> float:
            p = min(max(p, 1e-6), 1 - 1e-6)
            return math.log(p / (1 - p))

        self.prior_logit_shift.fill_(logit(data_pos_rate) - logit(train_pos_rate))

    # ------------------------------------------------------------------ forward
    def normalize(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        image = audio = lengths = None
        if self.image_encoder is not None:
            image = (batch["image"].float() / 255.0 - self.image_mean) / self.image_std
            if self.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
        if self.audio_encoder is not None:
            lengths = batch["lengths"]
            audio = (batch["audio"].float() - self.audio_mean) / self.audio_std
            audio = audio * lengths_to_mask(lengths, audio.shape[1]).unsqueeze(-1)
        return image, audio, lengths

    def features(self, batch: dict[str, Tensor]) -> list[Tensor]:
        image, audio, lengths = self.normalize(batch)
        if self.training:
            image, audio = self._augment(image, audio, lengths)
        feats = []
        if self.image_encoder is not None:
            feats.append(self.image_encoder(image))
        if self.audio_encoder is not None:
            feats.append(self.audio_encoder(audio, lengths))
        return feats

    def _augment(self, image: Tensor | None, audio: Tensor | None, lengths: Tensor | None):
        shift = self.hparams.image_shift
        if image is not None and shift > 0:
            # random translation by up to `shift` pixels (pad, then crop at a random offset)
            padded = F.pad(image, (shift, shift, shift, shift))
            dx, dy = torch.randint(0, 2 * shift + 1, (2,)).tolist()
            image = padded[:, :, dy : dy + 28, dx : dx + 28]
        width = self.hparams.audio_time_mask
        if audio is not None and width > 0:
            # SpecAugment-style time mask of up to `width` frames inside each utterance
            t = torch.arange(audio.shape[1], device=audio.device)
            w = torch.randint(0, width + 1, (audio.shape[0], 1), device=audio.device)
            w = torch.minimum(w, (lengths.unsqueeze(1) - 1).clamp(min=0))
            start = (torch.rand(audio.shape[0], 1, device=audio.device) * (lengths.unsqueeze(1) - w)).long()
            keep = ~((t >= start) & (t < start + w))
            audio = audio * keep.unsqueeze(-1)
        return image, audio

    def _modality_dropout(self, feats: list[Tensor]) -> list[Tensor]:
        p = self.hparams.modality_dropout
        if not self.training or p <= 0 or len(feats) < 2:
            return feats
        b = feats[0].shape[0]
        drop = torch.rand(b, device=feats[0].device) < p
        which = torch.randint(0, len(feats), (b,), device=feats[0].device)
        return [f * (~(drop & (which == i))).unsqueeze(1).to(f.dtype) for i, f in enumerate(feats)]

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits: (B,) for match (prior-corrected in eval), (B, 10) for digit tasks."""
        logits = self.fusion(self._modality_dropout(self.features(batch)))
        if self.task == "match":
            logits = logits.squeeze(-1)
            if not self.training:
                logits = logits + self.decision_shift
        return logits

    def predict_proba(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self(batch).float()
        return torch.sigmoid(logits) if self.task == "match" else logits.softmax(-1)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        feats = self._modality_dropout(self.features(batch))
        logits = self.fusion(feats)
        target = batch["target"]
        if self.task == "match":
            logits = logits.squeeze(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, target.float())
            if stage != "train":
                logits = logits + self.decision_shift
            if stage == "val" and self.hparams.threshold_from_val:
                self.val_logits.update(logits.detach())
                self.val_targets.update(target.detach().float())
            preds = torch.sigmoid(logits)
        else:
            logits = logits.float()
            loss = F.cross_entropy(logits, target)
            preds = logits.softmax(-1)

        aux = self._aux_logits(feats)
        if aux is not None and self.hparams.aux_digit_weight > 0:
            aux_loss = self._aux_loss(aux, batch)
            if aux_loss is not None:
                loss = loss + self.hparams.aux_digit_weight * aux_loss
        if self.hparams.balance_weight > 0 and hasattr(self.fusion, "balance_loss"):
            loss = loss + self.hparams.balance_weight * self.fusion.balance_loss(feats)

        preds = preds.detach()  # metrics keep their inputs (AUROC): never keep the autograd graph
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(preds, target.long())
        getattr(self, f"{stage}_loss").update(loss.detach())
        if stage != "train" and aux is not None:
            self._update_aux_acc(aux, batch, stage)
        if stage == "test":
            self.test_confmat.update(preds, target.long())
        return loss

    def _aux_logits(self, feats: list[Tensor]) -> list[Tensor] | None:
        if hasattr(self.fusion, "modality_logits"):
            return [x.float() for x in self.fusion.modality_logits(feats)]
        if self.aux_heads is not None:
            return [head(f).float() for head, f in zip(self.aux_heads, feats)]
        return None

    def _modality_names(self) -> list[str]:
        return [n for n, e in (("image", self.image_encoder), ("audio", self.audio_encoder)) if e is not None]

    def _aux_loss(self, aux: list[Tensor], batch: dict[str, Tensor]) -> Tensor | None:
        losses = []
        for name, logits in zip(self._modality_names(), aux):
            labels = batch.get(f"{name}_digit")
            if labels is not None:
                losses.append(F.cross_entropy(logits[:, :N_DIGITS], labels, ignore_index=-1))
        return torch.stack(losses).mean() if losses else None

    def _update_aux_acc(self, aux: list[Tensor], batch: dict[str, Tensor], stage: str) -> None:
        for name, logits in zip(self._modality_names(), aux):
            labels = batch.get(f"{name}_digit")
            if labels is not None and logits.shape[-1] == N_DIGITS:
                self.aux_acc[f"{stage}_{name}"].update(logits.detach(), labels)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"index": batch["index"], "proba": self.predict_proba(batch)}

    # ------------------------------------------------------------------ epoch ends
    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), sync_dist=True)
        self.train_metrics.reset()
        self.train_loss.reset()

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()
        self.val_loss.reset()

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_acc_best.update(values["val/acc"])
        self.log_dict(values, prog_bar=True, sync_dist=True)
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        self._log_aux("val")
        self.val_metrics.reset()
        self.val_loss.reset()
        # val_logits is filled only for the match task with threshold_from_val (see _step)
        if self.val_logits.update_called and not self.trainer.sanity_checking:  # sanity: untrained model
            self._tune_threshold(self.val_logits.compute(), self.val_targets.compute().bool())
            self.log("val/logit_shift", self.val_logit_shift, sync_dist=True)
        self.val_logits.reset()
        self.val_targets.reset()

    @torch.no_grad()
    def _tune_threshold(self, logits: Tensor, target: Tensor) -> None:
        """Move the decision point to the logit shift that maximises accuracy on these (validation)
        predictions. The prior correction alone is exact only for calibrated probabilities; a model trained
        on balanced batches is often too cautious on positives. Called after each validation, so every
        checkpoint carries the shift tuned on its own epoch's validation predictions (the epoch's val
        metrics were measured with the previous shift), and the test split is never looked at."""
        if target.all() or not target.any():
            return  # one class only: nothing to tune against
        grid = torch.linspace(-8.0, 8.0, 321, device=logits.device)
        extra = grid - self.val_logit_shift  # logits already include the current shift
        acc = ((logits[None, :] + extra[:, None] > 0) == target[None, :]).float().mean(1)
        best = torch.nonzero(acc >= acc.max() - 1e-9).flatten()
        self.val_logit_shift.copy_(grid[best[len(best) // 2]])  # middle of the best candidates

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self._log_aux("test")
        self._log_confusion_figure()
        self.test_metrics.reset()
        self.test_loss.reset()
        self.test_confmat.reset()

    def _log_aux(self, stage: str) -> None:
        for name in ("image", "audio"):
            metric = self.aux_acc[f"{stage}_{name}"]
            if metric.update_called:
                self.log(f"{stage}/{name}_digit_acc", metric.compute(), sync_dist=True)
                metric.reset()

    def _log_confusion_figure(self) -> None:
        if not self.test_confmat.update_called:
            return
        self.confusion = self.test_confmat.compute().cpu()
        for logger in self.loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_figure") and self.trainer.is_global_zero:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.pyplot as plt

                fig, _ = self.test_confmat.plot(self.confusion)
                writer.add_figure("test/confusion_matrix", fig, global_step=self.global_step)
                plt.close(fig)

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        opt_cfg = _as_container(self.hparams.optimizer) or OmegaConf.create(
            {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
        )
        optimizer = instantiate(opt_cfg)(params=self.parameters())
        sched_cfg = _as_container(self.hparams.scheduler)
        if sched_cfg is None:
            return optimizer
        sched_cfg = OmegaConf.to_container(sched_cfg, resolve=True)
        interval = sched_cfg.pop("interval", "epoch")
        if sched_cfg.get("_target_", "").endswith("OneCycleLR") and "total_steps" not in sched_cfg:
            sched_cfg["total_steps"] = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = instantiate(sched_cfg)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": "val/acc"},
        }
