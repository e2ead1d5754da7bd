"""Test accuracy with one modality degraded: ``python -m mmdigits.evaluate ckpt_path=... +robustness=true``.

Degradations (applied to the raw batch, so the model's own normalisation runs as usual):

* ``image_noise`` / ``audio_noise``: Gaussian noise of ``level`` standard deviations *of the normalised
  input* (i.e. ``level * train std`` on the raw scale: pixels 0..255, MFCC per coefficient), no clipping;
  padded audio frames stay zero.
* ``image_missing`` / ``audio_missing``: that modality's *features* are replaced by zeros (what
  ``model.modality_dropout`` trains for) on a fraction ``level`` of the pairs. Two-modality models only.
* ``audio_time_mask``: one contiguous block of ``round(level * length)`` frames per utterance is set to the
  training mean (zero after normalisation, like the ``audio_time_mask`` augmentation).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdigits.models.module import MultimodalModule
from mmdigits.utils.io import atomic_savefig

NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)
MISSING_LEVELS = (0.0, 0.25, 0.5, 1.0)
MASK_LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75)


def degrade(
    model: MultimodalModule, batch: dict[str, Tensor], kind: str, level: float, gen: torch.Generator
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(degraded batch, per-modality feature keep-masks) for one degradation at one level."""
    b = {k: v.clone() for k, v in batch.items()}
    keep: dict[str, Tensor] = {}
    n = len(b["target"])
    if kind == "image_noise":
        std = float(model.image_std) * 255.0
        b["image"] = b["image"] + level * std * torch.randn(b["image"].shape, generator=gen)
    elif kind == "audio_noise":
        noise = torch.randn(b["audio"].shape, generator=gen) * model.audio_std.cpu()
        real = (torch.arange(b["audio"].shape[1])[None, :] < b["lengths"][:, None]).unsqueeze(-1)
        b["audio"] = b["audio"] + level * noise * real
    elif kind == "audio_time_mask":
        lengths = b["lengths"]
        width = torch.round(level * lengths.float()).long()
        start = (torch.rand(n, generator=gen) * (lengths - width + 1).float()).long()
        t = torch.arange(b["audio"].shape[1])[None, :]
        masked = ((t >= start[:, None]) & (t < (start + width)[:, None])).unsqueeze(-1)
        b["audio"] = torch.where(masked, model.audio_mean.cpu().expand_as(b["audio"]), b["audio"])
    elif kind.endswith("_missing"):
        keep[kind.removesuffix("_missing")] = torch.rand(n, generator=gen) >= level
    else:
        raise ValueError(f"unknown degradation {kind!r}")
    return b, keep


@torch.no_grad()
def _correct(model: MultimodalModule, batch: dict[str, Tensor], keep: dict[str, Tensor]) -> Tensor:
    """Per-pair correctness of the model in eval mode, with the features of dropped pairs zeroed."""
    feats = model.encode(batch)
    feats = [f * keep[m].unsqueeze(1).to(f) if m in keep else f for m, f in zip(model.modalities, feats)]
    logits = model.decision_logits(model.fuse(feats).logits)
    return model.task.labels(logits) == batch["target"].long()


def degradations(model: MultimodalModule) -> dict[str, tuple[float, ...]]:
    """Degradation name -> levels, for the modalities this model reads."""
    names = model.modalities
    out: dict[str, tuple[float, ...]] = {}
    if "image" in names:
        out["image_noise"] = NOISE_LEVELS
    if "audio" in names:
        out["audio_noise"] = NOISE_LEVELS
        out["audio_time_mask"] = MASK_LEVELS
    if len(names) == 2:
        out["image_missing"] = out["audio_missing"] = MISSING_LEVELS
    return out


def robustness_table(model: MultimodalModule, loader: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Rows ``{degradation, level, acc, n}`` over every batch of ``loader`` (the test split)."""
    model.eval()
    batches = [{k: v.cpu() for k, v in b.items()} for b in loader]
    rows = []
    for kind, levels in degradations(model).items():
        for level in levels:
            gen = torch.Generator().manual_seed(seed)
            correct = []
            for batch in batches:
                b, keep = degrade(model, batch, kind, level, gen)
                correct.append(_correct(model, b, keep))
            hits = torch.cat(correct)
            rows.append(
                {"degradation": kind, "level": level, "acc": hits.float().mean().item(), "n": len(hits)}
            )
    return rows


def write_outputs(rows: list[dict[str, Any]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "robustness.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["degradation", "level", "acc", "n"])
        w.writeheader()
        w.writerows(rows)
    lines = ["| degradation | level | accuracy | n |", "|---|---:|---:|---:|"]
    lines += [f"| {r['degradation']} | {r['level']:g} | {r['acc']:.4f} | {r['n']} |" for r in rows]
    (out_dir / "robustness.md").write_text("\n".join(lines) + "\n\n" + (__doc__ or "").split("\n\n", 1)[1])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in dict.fromkeys(r["degradation"] for r in rows):
        pts = [(r["level"], r["acc"]) for r in rows if r["degradation"] == kind]
        ax.plot(*np.array(pts).T, marker="o", label=kind)
    ax.set(xlabel="degradation level (noise std / fraction)", ylabel="test accuracy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out_dir / "robustness.png", dpi=120)
    plt.close(fig)


def robustness_report(model: MultimodalModule, datamodule: Any, out_dir: str | Path) -> dict[str, Any]:
    """Score ``model`` on the test split under each degradation; writes robustness.{csv,md,png}."""
    datamodule.setup("test")
    model = model.cpu()
    rows = robustness_table(model, datamodule.whole_test_dataloader())
    write_outputs(rows, Path(out_dir))
    return {f"{r['degradation']}@{r['level']:g}": r["acc"] for r in rows}


@torch.no_grad()
def missing_modality_accuracy(model: MultimodalModule, loader: Any) -> dict[str, float]:
    """Test accuracy with the image (``test/acc_image_missing``) or the audio (``test/acc_audio_missing``)
    features of every pair set to zero, for two-modality models (what ``model.modality_dropout`` trains)."""
    if len(model.modalities) < 2:
        return {}
    model = model.cpu().eval()
    hits: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    for batch in loader:
        batch = {k: v.cpu() for k, v in batch.items()}
        none = torch.zeros(len(batch["target"]), dtype=torch.bool)
        for m in model.modalities:
            hits[m].append(_correct(model, batch, {m: none}))
    return {f"test/acc_{m}_missing": torch.cat(h).float().mean().item() for m, h in hits.items()}
