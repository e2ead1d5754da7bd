"""Encoders, fusion heads and their name registries (the LightningModule lives in ``module.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .audio import CNN1dEncoder, CNN2dEncoder, CRNNEncoder, LSTMEncoder, TransformerEncoder
from .fusion import AgreementFusion, ConcatFusion, GatedFusion, LateFusion, LowRankTensorFusion
from .image import CNN, LeNet, ResNet

AUDIO_ENCODERS: dict[str, type[nn.Module]] = {
    "lstm": LSTMEncoder,
    "cnn1d": CNN1dEncoder,
    "crnn": CRNNEncoder,
    "transformer": TransformerEncoder,
    "cnn2d": CNN2dEncoder,
}
IMAGE_ENCODERS: dict[str, type[nn.Module]] = {"cnn": CNN, "lenet": LeNet, "resnet": ResNet}
FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "late": LateFusion,
    "gated": GatedFusion,
    "lowrank_tensor": LowRankTensorFusion,
    "agreement": AgreementFusion,
}


def _lookup(registry: dict[str, type[nn.Module]], kind: str, name: str) -> type[nn.Module]:
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; choose from {sorted(registry)}")
    return registry[name]


def build_audio_encoder(name: str, **kwargs) -> nn.Module:
    """Audio encoder by registry name; ``forward(x (B,T,13), lengths (B,)) -> (B, .out_dim)``."""
    return _lookup(AUDIO_ENCODERS, "audio encoder", name)(**kwargs)


def build_image_encoder(name: str, **kwargs) -> nn.Module:
    """Image encoder by registry name; ``forward(x (B,1,28,28)) -> (B, .out_dim)``."""
    return _lookup(IMAGE_ENCODERS, "image encoder", name)(**kwargs)


def build_fusion(name: str, in_dims: Sequence[int], out_dim: int, **kwargs) -> nn.Module:
    """Fusion head by registry name; ``forward(list of (B, in_dims[m])) -> logits (B, out_dim)``."""
    return _lookup(FUSIONS, "fusion", name)(list(in_dims), out_dim, **kwargs)


__all__ = [
    "AUDIO_ENCODERS",
    "FUSIONS",
    "IMAGE_ENCODERS",
    "CNN",
    "AgreementFusion",
    "CNN1dEncoder",
    "CNN2dEncoder",
    "CRNNEncoder",
    "ConcatFusion",
    "GatedFusion",
    "LSTMEncoder",
    "LateFusion",
    "LeNet",
    "LowRankTensorFusion",
    "ResNet",
    "TransformerEncoder",
    "build_audio_encoder",
    "build_fusion",
    "build_image_encoder",
]
