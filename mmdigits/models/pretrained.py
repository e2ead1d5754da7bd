"""Start a model's encoders (and per-modality heads) from the checkpoints of unimodal runs ("experts").

``model.pretrained = {image: <ckpt or null>, audio: <ckpt or null>, heads: true}`` (``pretrained=experts``)
names the checkpoint each encoder starts from. The copy happens once, at ``on_fit_start`` of a fresh fit, by
the :class:`StartFromExperts` callback (``mmdigits.train`` adds it; the module refuses to train while its
experts are pending): never over weights loaded from a checkpoint (a reloaded model, a resumed run: loading
a state dict clears ``experts_pending``), so a resumed run never reads the experts again.

For each named modality the expert (read through :func:`~mmdigits.models.loading.read_checkpoint`) must hold
an encoder of that modality whose config equals this run's; otherwise a CheckpointError names the file and
the keys that differ. Copied: the encoder's weights and that modality's normalisation buffers (the expert's
statistics: its encoder learned on inputs normalised that way, so the datamodule's statistics, set just
before, are replaced for that modality only; on the same build they are the same numbers). With ``heads``,
the expert's digit read-out (``fusion.head`` of a unimodal ConcatFusion, ``fusion.heads[0]`` of a unimodal
AgreementFusion) also goes into this model's head of that modality (``fusion.heads[i]``, a unimodal
``fusion.head``, or the aux probe ``aux_heads[i]``) where names and shapes fit; where they do not, it is
skipped and the log says so.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from mmdigits.errors import CheckpointError
from mmdigits.models.experts import expert_paths
from mmdigits.models.loading import read_checkpoint
from mmdigits.models.safe_hparams import ZOO
from mmdigits.tasks import get_task

log = logging.getLogger("mmdigits.pretrained")
BUFFERS = {"image": ("image_mean", "image_std"), "audio": ("audio_mean", "audio_std")}
EXPERT_HEADS = ("fusion.head.", "fusion.heads.0.")  # a unimodal expert's read-out: concat, agreement


def config_differences(theirs: Any, ours: Any, key: str = "") -> list[str]:
    """``key: theirs != ours`` for each differing key of two encoder configs; a key missing on one side
    counts as its class's default."""
    if not (isinstance(theirs, dict) and isinstance(ours, dict)):
        return [] if theirs == ours else [f"{key or 'config'}: {theirs!r} != {ours!r}"]
    defaults = _defaults(ours.get("_target_")) if theirs.get("_target_") == ours.get("_target_") else {}
    out = []
    for k in sorted(set(theirs) | set(ours)):
        missing = inspect.Parameter.empty
        a, b = theirs.get(k, defaults.get(k, missing)), ours.get(k, defaults.get(k, missing))
        a, b = (list(v) if isinstance(v, tuple) else v for v in (a, b))
        out += config_differences(a, b, f"{key}.{k}" if key else k)
    return out


def _defaults(target: Any) -> dict[str, Any]:
    cls = ZOO.get(target) if isinstance(target, str) else None
    return {} if cls is None else {n: p.default for n, p in inspect.signature(cls).parameters.items()}


class StartFromExperts(Callback):
    """Copies the experts of ``model.pretrained`` into a fresh fit's model at ``on_fit_start`` (after
    ``setup("fit")`` set the datamodule's statistics); nothing when the weights came from a checkpoint."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if getattr(pl_module, "experts_pending", False):
            load_experts(pl_module, pl_module.hparams.pretrained)


def load_experts(model: Any, spec: Any) -> dict[str, list[str]]:
    """Copy each expert of ``spec`` into ``model`` (a MultimodalModule); what was copied, per modality."""
    copied: dict[str, list[str]] = {}
    for modality, path in expert_paths(spec, model.modalities).items():
        ckpt = read_checkpoint(path)
        hp, state = ckpt["hyper_parameters"], ckpt["state_dict"]
        key = f"{modality}_encoder"
        try:
            expert_task = get_task(hp.get("task", "match"))
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: unknown task {hp.get('task')!r}") from err
        if hp.get(key) is None or modality not in expert_task.modalities:
            raise CheckpointError(
                f"{path}: holds no {modality} encoder (task {expert_task.name}), so it cannot start "
                f"model.pretrained.{modality}; give the checkpoint of a run that trained one"
            )
        differ = config_differences(hp[key], model.hparams[key])
        if differ:
            shown = "; ".join(differ[:3]) + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else "")
            raise CheckpointError(
                f"{path}: its {modality} encoder config differs from this run's (expert != run: {shown}); "
                f"train this run with the expert's {key}, or pick an expert of this one"
            )
        _load(model.encoder(modality), _part(state, f"{key}."), path, key)
        for name in BUFFERS[modality]:
            getattr(model, name).copy_(state[name].to(getattr(model, name)))
        copied[modality] = [key, *BUFFERS[modality]]
        if (spec.get("heads", True)) and not expert_task.binary:
            copied[modality] += _copy_head(model, modality, hp, state, path)
        log.info("model.pretrained.%s: %s from %s", modality, ", ".join(copied[modality]), path)
    model.experts_pending = False
    return copied


def _part(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load(module: nn.Module, part: dict[str, Tensor], path: Any, what: str) -> None:
    try:
        module.load_state_dict(part, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: its {what} weights do not fit this run's {what}: {first}") from err


def _fits(module: nn.Module, part: dict[str, Tensor]) -> bool:
    own = module.state_dict()
    return bool(part) and own.keys() == part.keys() and all(own[k].shape == v.shape for k, v in part.items())


def _copy_head(
    model: Any, modality: str, hp: dict[str, Any], state: dict[str, Tensor], path: Any
) -> list[str]:
    """The expert's digit read-out into this model's heads of ``modality`` where it fits."""
    task = get_task(hp.get("task", "match"))
    expert_encoders = [m for m in task.modalities if hp.get(f"{m}_encoder") is not None]
    expert_head = next((_part(state, p) for p in EXPERT_HEADS if _part(state, p)), {})
    if len(expert_encoders) != 1 or not expert_head:
        log.info("model.pretrained.%s: %s is not a unimodal digit expert: no head copied", modality, path)
        return []
    i = model.modalities.index(modality)
    fusion, targets = model.fusion, {}
    if hasattr(fusion, "heads"):
        targets[f"fusion.heads.{i}"] = fusion.heads[i]
    elif hasattr(fusion, "head") and len(model.modalities) == 1:
        targets["fusion.head"] = fusion.head
    if model.aux_heads is not None:
        targets[f"aux_heads.{i}"] = model.aux_heads[i]
    copied = []
    for name, head in targets.items():
        part = expert_head
        if name.startswith("aux_heads.") and _part(state, "aux_heads.0."):  # the expert's own probe
            part = _part(state, "aux_heads.0.")
        elif isinstance(head, nn.Linear) and set(part) == {"0.weight", "0.bias"}:  # MLP(d, [], 10)
            part = {k[2:]: v for k, v in part.items()}
        if _fits(head, part):
            head.load_state_dict(part)
            copied.append(name)
        else:
            log.info("model.pretrained.%s: the expert's read-out does not fit %s: not copied", modality, name)
    return copied
