"""The padding contract in training mode, for every audio encoder under conf/audio_encoder/: batch statistics
(masked batch norm) see only the frames inside each length, so an utterance's features, and the running
statistics, do not change when more padding is appended to its batch."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_class
from torch import nn

from mmdigits.models.layers import lengths_to_mask
from tests.zoo import build, zoo

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [1, 2, 5, 17, 40, 93, 64, 3]
EXTRA = 37  # frames of padding appended (odd, so strided layers see other alignments)
# encoders that cannot meet the contract, with the reason; a name here must still be a config
EXCLUDED: dict[str, str] = {}


def no_dropout(config: dict[str, Any]) -> dict[str, float]:
    """Every ``*dropout*`` argument of the config's class set to 0: the one randomness a training step may
    draw differently for batches of different shapes."""
    params = inspect.signature(get_class(config["_target_"])).parameters
    return {name: 0.0 for name in params if "dropout" in name}


def batch(extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``LENGTHS`` utterances of random MFCCs, zero past each length and ``extra`` zero frames past the
    longest."""
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor(LENGTHS)
    T = max(LENGTHS)
    x = torch.randn(len(LENGTHS), T, 13, generator=g) * lengths_to_mask(lens, T).unsqueeze(-1)
    return torch.cat([x, torch.zeros(len(LENGTHS), extra, 13)], dim=1), lens


def running_stats(model: nn.Module) -> list[torch.Tensor]:
    return [
        t
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for t in (m.running_mean, m.running_var)
    ]


def assert_train_padding_invariant(encoder: nn.Module) -> None:
    """One training step's features and updated running statistics, from the batch padded to its longest
    utterance and from the same batch with ``EXTRA`` more frames of padding, starting from the same state."""
    encoder.train()
    tight, wide = copy.deepcopy(encoder), copy.deepcopy(encoder)
    again = copy.deepcopy(encoder)(*batch())
    out_tight, out_wide = tight(*batch()), wide(*batch(EXTRA))
    torch.testing.assert_close(again, out_tight, msg="a training step is not deterministic: no comparison")
    torch.testing.assert_close(out_wide, out_tight, atol=1e-5, rtol=1e-4)
    for a, b in zip(running_stats(wide), running_stats(tight)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(zoo("audio_encoder")))
def test_audio_train_mode_padding_invariance(name: str) -> None:
    if name in EXCLUDED:
        pytest.skip(f"audio_encoder={name}: {EXCLUDED[name]}")
    torch.manual_seed(0)
    encoder = build("audio_encoder", name, **no_dropout(zoo("audio_encoder")[name]))
    assert_train_padding_invariant(encoder)


def test_exclusions_name_configs() -> None:
    assert set(EXCLUDED) <= set(zoo("audio_encoder")), sorted(set(EXCLUDED) - set(zoo("audio_encoder")))
    assert all(reason.strip() for reason in EXCLUDED.values())


class PlainBatchNorm(nn.Module):
    """Masks its input, then normalises with plain batch statistics over every frame, padding included."""

    out_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(13, 4)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1)
        h = self.norm((self.proj(x) * mask).transpose(1, 2)).transpose(1, 2) * mask
        return h.sum(1) / lengths.unsqueeze(-1)


def test_contract_catches_plain_batch_norm_over_padding(tmp_path: Path) -> None:
    """An encoder added as a YAML alone is checked; one whose batch norm counts padded frames fails."""
    (tmp_path / "audio_encoder").mkdir()
    (tmp_path / "audio_encoder" / "plain_bn.yaml").write_text(
        "# @package model.audio_encoder\n_target_: tests.test_encoders_train.PlainBatchNorm\n"
    )
    assert sorted(zoo("audio_encoder", tmp_path)) == ["plain_bn"]
    with pytest.raises(AssertionError, match="not close"):
        assert_train_padding_invariant(build("audio_encoder", "plain_bn", tmp_path))
