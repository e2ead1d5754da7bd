"""One LightningModule for every task (see :mod:`mmdigits.tasks`).

The one path from a batch to logits, which training, evaluation, prediction, robustness and embedding all
use: ``encode(batch) -> feats`` (one per modality, in ``modalities`` order), ``fuse(feats) -> FusionOutput``
(task-shaped logits plus per-modality head logits, each computed once), ``decision_logits(logits)`` (adds
the decision shift of binary tasks outside training). ``forward(batch)`` is their composition.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningModule
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import CatMetric, MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mmdigits.data.datamodule import data_info, train_pos_rate
from mmdigits.models import augment as aug
from mmdigits.models.decision import best_logit_shift
from mmdigits.models.experts import check_copied, expert_paths
from mmdigits.models.fusion import FusionOutput
from mmdigits.models.layers import lengths_to_mask
from mmdigits.models.schedule import build_scheduler, check_resume_budget, spans_max_epochs
from mmdigits.tasks import MODALITIES, N_DIGITS, get_task
from mmdigits.utils.figures import add_confusion_figure

# buffers added after checkpoints were first written: loading an older checkpoint keeps their defaults
OPTIONAL_BUFFERS = ("val_logit_shift",)
DEFAULT_FUSION = {"_target_": "mmdigits.models.fusion.ConcatFusion"}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def plain(cfg: Any) -> Any:
    """DictConfigs as plain containers: a checkpoint holds only what torch's weights-only unpickler reads."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class MultimodalModule(LightningModule):
    """Encoders -> fusion -> logits, with the task's loss and metrics, and the optimiser.

    Encoders and fusion are given as Hydra configs (``_target_`` dicts), not modules, so the checkpoint's
    hyperparameters alone rebuild the model. Normalisation statistics and the class prior live in buffers,
    so they travel in the checkpoint's state dict too.
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
        audio_freq_mask: int = 0,
        audio_speed: float = 0.0,
        audio_warp: float = 0.0,
        mixup_alpha: float = 0.0,
        label_smoothing: float = 0.0,
        image_shift: int = 0,
        image_affine: dict | None = None,
        test_time_shifts: bool = False,
        channels_last: bool = True,
        threshold_from_val: bool = False,
        data_info: dict | None = None,
        pretrained: dict | None = None,
    ) -> None:
        super().__init__()
        audio_encoder, image_encoder, fusion = plain(audio_encoder), plain(image_encoder), plain(fusion)
        optimizer, scheduler, data_info = plain(optimizer), plain(scheduler), plain(data_info)
        image_affine, pretrained = aug.check_affine(plain(image_affine)), plain(pretrained)
        self.save_hyperparameters(logger=False)  # reads the (now plain) arguments
        self.task = get_task(task)
        given = {"image": image_encoder, "audio": audio_encoder}
        self.modalities = [m for m in MODALITIES if m in self.task.modalities and given[m] is not None]
        if not self.modalities:
            raise ValueError(f"task {task!r} needs an encoder for one of {self.task.modalities}; got none")
        self.experts_pending = bool(expert_paths(pretrained, self.modalities))  # StartFromExperts
        if mixup_alpha < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(
                f"need model.mixup_alpha >= 0 and 0 <= model.label_smoothing < 1; got "
                f"{mixup_alpha} and {label_smoothing}"
            )
        if mixup_alpha > 0 and self.task.binary:
            raise ValueError(f"model.mixup_alpha mixes digits; task {task!r} is binary: use a digit task")
        self.image_encoder = instantiate(image_encoder) if "image" in self.modalities else None
        self.audio_encoder = instantiate(audio_encoder) if "audio" in self.modalities else None
        # NHWC lets oneDNN pick its fast kernels for small convolutions (about 1.3x for LeNet on CPU)
        self.channels_last = channels_last and self.image_encoder is not None
        if self.channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)
        in_dims = [self.encoder(m).out_dim for m in self.modalities]
        self.fusion = instantiate(fusion or DEFAULT_FUSION, in_dims=in_dims, out_dim=self.task.num_outputs)
        # aux digit supervision reuses the fusion's per-modality heads; other fusions get linear probes
        self.aux_heads = None
        if aux_digit_weight > 0 and not hasattr(self.fusion, "combine"):
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
        self.test_predictions: Tensor | None = None  # (pairs, 4) of the last test, in index order

    def encoder(self, modality: str) -> nn.Module:
        return {"image": self.image_encoder, "audio": self.audio_encoder}[modality]

    def _build_metrics(self) -> None:
        self.train_metrics = self.task.metrics().clone(prefix="train/")
        self.val_metrics = self.task.metrics().clone(prefix="val/")
        self.test_metrics = self.task.metrics().clone(prefix="test/")
        self.test_confmat = self.task.confusion_matrix()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume from checkpoint
        self.val_logits, self.val_targets = CatMetric(), CatMetric()  # for threshold_from_val
        self.test_rows = CatMetric()  # per test pair: index, target, decision, probability (gathered on DDP)
        stages = [f"{stage}_{m}" for stage in ("val", "test") for m in MODALITIES]
        self.aux_acc = nn.ModuleDict({k: MulticlassAccuracy(N_DIGITS, average="micro") for k in stages})

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and dm is not None and getattr(dm, "stats", None):
            self.set_normalization(dm.stats)
            if self.task.binary and self.hparams.prior_correction:
                self.set_prior(dm.pos_rate, train_pos_rate(dm))
            self.hparams["data_info"] = data_info(dm)  # saved with the checkpoint's hparams

    def on_fit_start(self) -> None:  # after StartFromExperts (pretrained.py) and any checkpoint's restore
        check_copied(self)

    def set_normalization(self, stats: dict[str, Tensor]) -> None:
        for name in ("audio_mean", "audio_std", "image_mean", "image_std"):
            getattr(self, name).copy_(torch.as_tensor(stats[name], dtype=torch.float32))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        self.experts_pending = False  # the weights come from a checkpoint
        for name in OPTIONAL_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def decision_shift(self) -> Tensor:
        """Added to binary logits outside training: prior correction plus the validation-tuned offset."""
        return self.prior_logit_shift + self.val_logit_shift

    def set_prior(self, data_pos_rate: float, train_pos_rate: float) -> None:
        rates = torch.tensor([data_pos_rate, train_pos_rate], dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        self.prior_logit_shift.fill_(float(rates.logit().diff().neg()))

    # ------------------------------------------------------------------ the logits path
    def encode(self, batch: dict[str, Tensor], mix: tuple[Tensor, float] | None = None) -> list[Tensor]:
        """Normalise (and, in training, augment) the raw batch; one feature tensor per modality. ``mix``
        (partner indices, weight) blends each example with its partner after augmentation (mixup)."""
        feats = [] if self.image_encoder is None else [self._image_features(batch["image"], mix)]
        if self.audio_encoder is not None:
            lengths = batch["lengths"]
            audio = (batch["audio"].float() - self.audio_mean) / self.audio_std
            audio = audio * lengths_to_mask(lengths, audio.shape[1]).unsqueeze(-1)
            if self.training:
                audio, lengths = self._augment_audio(audio, lengths)
            if mix is not None:  # zero past each length, so the blend is zero past the longer one
                audio, lengths = aug.mix(audio, *mix), torch.maximum(lengths, lengths[mix[0]])
            feats.append(self.audio_encoder(audio, lengths))
        return self._modality_dropout(feats)

    def _image_features(self, image: Tensor, mix: tuple[Tensor, float] | None = None) -> Tensor:
        image = (image.float() / 255.0 - self.image_mean) / self.image_std
        if self.training and self.hparams.image_shift > 0:
            image = aug.random_shift(image, self.hparams.image_shift)
        if self.training and self.hparams.image_affine:
            image = aug.random_affine(image, **self.hparams.image_affine)
        if mix is not None:
            image = aug.mix(image, *mix)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.image_encoder(image)

    def _augment_audio(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        if hp.audio_warp > 0:
            audio = aug.cepstral_warp(audio, lengths, hp.audio_warp, self.audio_mean, self.audio_std)
        if hp.audio_speed > 0:
            audio, lengths = aug.speed_perturb(audio, lengths, hp.audio_speed)
        if hp.audio_time_mask > 0:
            audio = aug.time_mask(audio, lengths, hp.audio_time_mask)
        if hp.audio_freq_mask > 0:
            audio = aug.freq_mask(audio, hp.audio_freq_mask)
        return audio, lengths

    def _modality_dropout(self, feats: list[Tensor]) -> list[Tensor]:
        p = self.hparams.modality_dropout
        if not self.training or p <= 0 or len(feats) < 2:
            return feats
        b = feats[0].shape[0]
        drop = torch.rand(b, device=feats[0].device) < p
        which = torch.randint(0, len(feats), (b,), device=feats[0].device)
        return [f * (~(drop & (which == i))).unsqueeze(1).to(f.dtype) for i, f in enumerate(feats)]

    def fuse(self, feats: list[Tensor]) -> FusionOutput:
        """Task-shaped float32 logits ((B,) binary, (B, 10) digits) and the per-modality head logits (the
        fusion's own heads, else the aux probes; None without either)."""
        if hasattr(self.fusion, "combine"):
            heads = self.fusion.modality_logits(feats)
            raw = self.fusion.combine(heads)
        else:
            raw = self.fusion(feats)
            heads = None if self.aux_heads is None else [h(f) for h, f in zip(self.aux_heads, feats)]
        return FusionOutput(self.task.logits(raw), None if heads is None else [h.float() for h in heads])

    def decision_logits(self, logits: Tensor) -> Tensor:
        """Binary logits outside training get the decision shift; anything else is returned as is."""
        return logits + self.decision_shift if self.task.binary and not self.training else logits

    def infer(self, batch: dict[str, Tensor]) -> FusionOutput:
        """``fuse(encode(batch))``; outside training with ``test_time_shifts``, the logits are those of the
        mean probabilities over the image and its four 1-pixel shifts (the heads: the image's own)."""
        feats = self.encode(batch)
        out = self.fuse(feats)
        if self.training or not self.hparams.get("test_time_shifts") or self.image_encoder is None:
            return out
        shifted = (aug.shift_image(batch["image"], dx, dy) for dx, dy in aug.ONE_PIXEL_SHIFTS)
        # only the image is encoded again; it comes first (MODALITIES' order)
        views = [out.logits] + [self.fuse([self._image_features(im), *feats[1:]]).logits for im in shifted]
        return FusionOutput(self.task.mean_logits(views), out.modality_logits)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.decision_logits(self.infer(batch).logits)

    def predict_proba(self, batch: dict[str, Tensor]) -> Tensor:
        return self.task.proba(self(batch))

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        alpha = self.hparams.mixup_alpha if stage == "train" else 0.0
        mix = aug.draw_mix(len(batch["target"]), alpha, self.device) if alpha > 0 else None
        out = self.infer(batch) if stage == "test" else self.fuse(self.encode(batch, mix))
        target = batch["target"]
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0  # val/test: the plain NLL
        loss = self._label_loss(out, batch, smoothing)
        if mix is not None:  # the partners' labels, weighted as their inputs were
            partners = {k: v[mix[0]] for k, v in batch.items() if k == "target" or k.endswith("_digit")}
            loss = mix[1] * loss + (1.0 - mix[1]) * self._label_loss(out, partners, smoothing)
        logits = self.decision_logits(out.logits)
        if stage == "val" and self.task.binary and self.hparams.threshold_from_val:
            self.val_logits.update(logits.detach())
            self.val_targets.update(target.detach().float())
        heads = out.modality_logits
        if self.hparams.balance_weight > 0 and hasattr(self.fusion, "balance_loss"):
            loss = loss + self.hparams.balance_weight * self.fusion.balance_loss(heads)

        preds = self.task.proba(logits.detach())  # metrics keep their inputs (AUROC): never the graph
        getattr(self, f"{stage}_metrics").update(preds, target.long())
        getattr(self, f"{stage}_loss").update(loss.detach())
        if stage != "train" and heads is not None:
            self._update_aux_acc(heads, batch, stage)
        if stage == "test":
            self.test_confmat.update(preds, target.long())
            if "index" in batch:  # every loader batch has it; hand-made batches may not
                self.test_rows.update(self.task.prediction_rows(batch["index"], target, preds))
        return loss

    def _label_loss(self, out: FusionOutput, labels: dict[str, Tensor], smoothing: float) -> Tensor:
        """The task's loss, plus the heads' digit loss when digit labels supervise them."""
        loss = self.task.loss(out.logits, labels["target"], smoothing)
        if out.modality_logits is not None and self.hparams.aux_digit_weight > 0:
            aux_loss = self._aux_loss(out.modality_logits, labels)
            if aux_loss is not None:
                loss = loss + self.hparams.aux_digit_weight * aux_loss
        return loss

    def _aux_loss(self, heads: list[Tensor], batch: dict[str, Tensor]) -> Tensor | None:
        losses = []
        for name, logits in zip(self.modalities, heads):
            labels = batch.get(f"{name}_digit")
            if labels is not None:
                losses.append(nn.functional.cross_entropy(logits[:, :N_DIGITS], labels, ignore_index=-1))
        return torch.stack(losses).mean() if losses else None

    def _update_aux_acc(self, heads: list[Tensor], batch: dict[str, Tensor], stage: str) -> None:
        for name, logits in zip(self.modalities, heads):
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
        # val_logits is filled only for binary tasks with threshold_from_val (see _step)
        if self.val_logits.update_called and not self.trainer.sanity_checking:  # sanity: untrained model
            self._tune_threshold(self.val_logits.compute(), self.val_targets.compute().bool())
            self._share_shift_with_averaged_weights()
            self.log("val/logit_shift", self.val_logit_shift, sync_dist=True)
        self.val_logits.reset()
        self.val_targets.reset()

    def _tune_threshold(self, logits: Tensor, target: Tensor) -> None:
        if (shift := best_logit_shift(logits, target, self.val_logit_shift)) is not None:
            self.val_logit_shift.copy_(shift)

    def _share_shift_with_averaged_weights(self) -> None:
        """With EMA (WeightAveraging) the averaged copy, its buffers swapped with ours around validation and
        averaged every step, is validated, saved and tested: the shift tuned on it goes into both copies."""
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            averaged = getattr(callback, "_average_model", None)
            if isinstance(callback, WeightAveraging) and averaged is not None:
                averaged.module.val_logit_shift.copy_(self.val_logit_shift)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self._log_aux("test")
        self._log_confusion_figure()
        rows = self.test_rows.compute().reshape(-1, 4).cpu() if self.test_rows.update_called else None
        self.test_predictions = None if rows is None else rows[rows[:, 0].argsort()]
        for metric in (self.test_rows, self.test_metrics, self.test_loss, self.test_confmat):
            metric.reset()

    def _log_aux(self, stage: str) -> None:
        for name in MODALITIES:
            metric = self.aux_acc[f"{stage}_{name}"]
            if metric.update_called:
                self.log(f"{stage}/{name}_digit_acc", metric.compute(), sync_dist=True)
                metric.reset()

    def _log_confusion_figure(self) -> None:
        if self.test_confmat.update_called:
            self.confusion = self.test_confmat.compute().cpu()
            if self.trainer.is_global_zero:
                add_confusion_figure(self.loggers, self.test_confmat, self.confusion, self.global_step)

    # ------------------------------------------------------------------ optimisers
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and spans_max_epochs(plain(self.hparams.scheduler)):
            checkpoint["schedule_epochs"] = self.trainer.max_epochs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            started = checkpoint.get("schedule_epochs")
            check_resume_budget(self.trainer.ckpt_path, started, self.trainer.max_epochs)
        elif "current_model_state" in checkpoint:  # an EMA checkpoint tested by the trainer that fit it:
            # WeightAveraging, still holding its copy, would reload the raw weights over the averaged ones
            checkpoint["current_model_state"] = checkpoint["state_dict"]

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]  # frozen: added when unfrozen
        optimizer = instantiate(self.hparams.optimizer or DEFAULT_OPTIMIZER)(params=trainable)
        sched_cfg = plain(self.hparams.scheduler)
        if sched_cfg is None:
            return optimizer
        scheduler = build_scheduler(sched_cfg, optimizer, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
