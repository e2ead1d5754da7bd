"""The ``model.pretrained`` spec, ``{image: <ckpt or null>, audio: <ckpt or null>, heads: true}``: which
encoders start from the checkpoint of a unimodal run. The copy itself is :mod:`mmdigits.models.pretrained`'s
(it reads checkpoints, so the module does not import it)."""

from __future__ import annotations

from typing import Any

from mmdigits.errors import MMDigitsError
from mmdigits.tasks import MODALITIES

SPEC_KEYS = (*MODALITIES, "heads")


def expert_paths(spec: Any, modalities: list[str] | None = None) -> dict[str, str]:
    """``{modality: checkpoint}`` of a ``pretrained`` spec (None or {} -> {}); an error for unknown keys or an
    expert for a modality the model does not read (``modalities``)."""
    if not spec:
        return {}
    if not isinstance(spec, dict) or set(spec) - set(SPEC_KEYS):
        raise MMDigitsError(f"model.pretrained={spec!r}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    paths = {m: str(spec[m]) for m in MODALITIES if spec.get(m)}
    unused = [m for m in paths if modalities is not None and m not in modalities]
    if unused:
        raise MMDigitsError(
            f"model.pretrained.{unused[0]} is set, but this model has no {unused[0]} encoder "
            f"(its encoders: {', '.join(modalities or []) or 'none'})"
        )
    return paths


def check_copied(model: Any) -> None:
    """At the start of a fit: an error when ``model`` still waits for its experts (no StartFromExperts)."""
    if getattr(model, "experts_pending", False):
        raise MMDigitsError(
            "model.pretrained names experts, but nothing copied them: add "
            "mmdigits.models.pretrained.StartFromExperts() to the trainer's callbacks (mmdigits.train does)"
        )
