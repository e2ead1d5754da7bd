"""Freeze the pretrained encoders, then unfreeze them at a given epoch: Lightning's BaseFinetuning.

``callbacks=[default,freeze_experts]`` (conf/callbacks/freeze_experts.yaml). Before training, the encoders
that ``model.pretrained`` starts from (or those named by ``modalities``) are frozen, so the optimiser is built
without them; at epoch ``unfreeze_at_epoch`` they join it as a parameter group of their own whose learning
rate is ``lr_factor`` times the other groups', on the same schedule. ``unfreeze_at_epoch: null`` keeps them
frozen. Batch-norm layers of a frozen encoder are frozen too (their running statistics stay the expert's)
unless ``train_bn``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from mmdigits.errors import MMDigitsError
from mmdigits.models.experts import expert_paths
from mmdigits.tasks import MODALITIES

log = logging.getLogger("mmdigits.finetune")
# per-group keys that schedulers keep (OneCycleLR): a new group gets the first group's, scaled for rates
SCHEDULE_RATES = ("initial_lr", "max_lr", "min_lr")
SCHEDULE_KEYS = ("max_momentum", "base_momentum")


class FreezeExperts(BaseFinetuning):
    def __init__(
        self,
        unfreeze_at_epoch: int | None = 1,
        lr_factor: float = 1.0,
        modalities: Sequence[str] | None = None,
        train_bn: bool = False,
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0 or lr_factor <= 0:
            raise MMDigitsError(
                f"freeze_experts: need unfreeze_at_epoch >= 0 (or null) and lr_factor > 0; got "
                f"{unfreeze_at_epoch} and {lr_factor}"
            )
        unknown = [m for m in modalities or [] if m not in MODALITIES]
        if unknown:
            raise MMDigitsError(
                f"freeze_experts.modalities: unknown {unknown}; expected some of {MODALITIES}"
            )
        self.unfreeze_at_epoch, self.lr_factor, self.train_bn = unfreeze_at_epoch, lr_factor, train_bn
        self.modalities = list(modalities) if modalities is not None else None

    def frozen_modalities(self, pl_module: Any) -> list[str]:
        """The modalities whose encoders this callback freezes in ``pl_module``."""
        wanted = self.modalities
        if wanted is None:
            wanted = list(expert_paths(pl_module.hparams.get("pretrained"), pl_module.modalities))
        return [m for m in wanted if m in pl_module.modalities]

    def _encoders(self, pl_module: Any) -> list[nn.Module]:
        return [pl_module.encoder(m) for m in self.frozen_modalities(pl_module)]

    def freeze_before_training(self, pl_module: Any) -> None:
        encoders = self._encoders(pl_module)
        if not encoders:
            log.warning("freeze_experts: no pretrained encoder to freeze (model.pretrained names none)")
        for encoder in encoders:
            self.freeze(encoder, train_bn=self.train_bn)
        if encoders:
            log.info("freeze_experts: frozen %s until epoch %s", self.frozen_modalities(pl_module),
                     self.unfreeze_at_epoch)  # fmt: skip

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Optimizer) -> None:
        if self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        encoders = self._encoders(pl_module)
        params = [p for e in encoders for p in e.parameters()]
        if not params or all(p.requires_grad for p in params):
            return
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if all(id(p) in held for p in params):  # resumed after the unfreeze: the group was restored
            for encoder in encoders:
                self.make_trainable(encoder)
            return
        reference = optimizer.param_groups[0]
        self.unfreeze_and_add_param_group(
            encoders, optimizer, lr=reference["lr"] * self.lr_factor, initial_denom_lr=1.0, train_bn=True
        )
        added = optimizer.param_groups[-1]
        for key in SCHEDULE_RATES:
            if key in reference:
                added[key] = reference[key] * self.lr_factor
        added.update({k: reference[k] for k in SCHEDULE_KEYS if k in reference})
        for config in pl_module.trainer.lr_scheduler_configs:
            base = getattr(config.scheduler, "base_lrs", None)
            if isinstance(base, list) and len(base) < len(optimizer.param_groups):
                base.append(base[0] * self.lr_factor)
        log.info("freeze_experts: unfrozen %s at epoch %d (lr x %g)", self.frozen_modalities(pl_module),
                 epoch, self.lr_factor)  # fmt: skip
