"""Cepstral normalisation in the audio encoders' input: what a recording channel (a constant offset per
coefficient and utterance) or a gain per coefficient can and cannot change."""

from __future__ import annotations

import pytest
import torch

from mmdigits.models.layers import lengths_to_mask
from tests.zoo import LENGTHS, build, mfcc_batch, randomise_norms


def encoder_and_batch(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Audio encoder ``name`` in eval mode with non-trivial batch-norm statistics, and a batch of MFCCs."""
    torch.manual_seed(0)
    model = build("audio_encoder", name)
    randomise_norms(model)
    return model.eval(), *mfcc_batch(LENGTHS, 93)


@pytest.mark.parametrize(
    "name, invariant",
    [("cnn1d_deep_cmn_only", True), ("cnn1d_deep_cmvn_only", True), ("cnn1d_deep_cmn", False)],
)
def test_centred_input_ignores_a_constant_offset_per_utterance(name: str, invariant: bool) -> None:
    """A channel's (or a speaker's) constant cepstral offset cannot reach an encoder that reads only the
    centred MFCCs and their differences; one that also reads the MFCCs themselves sees it."""
    model, x, lens = encoder_and_batch(name)
    offset = torch.randn(len(LENGTHS), 1, 13) * 3 * lengths_to_mask(lens, 93).unsqueeze(-1)
    with torch.no_grad():
        same = torch.allclose(model(x, lens), model(x + offset, lens), atol=1e-4)
    assert same is invariant


@pytest.mark.parametrize("name, invariant", [("cnn1d_deep_cmvn_only", True), ("cnn1d_deep_cmn_only", False)])
def test_normalised_input_ignores_a_gain_per_coefficient_and_utterance(name: str, invariant: bool) -> None:
    """Cepstral mean and variance normalisation: a positive gain on each coefficient's trajectory (plus an
    offset) per utterance cannot reach the encoder; mean normalisation alone sees the gain."""
    model, x, lens = encoder_and_batch(name)
    valid = lengths_to_mask(lens, 93).unsqueeze(-1)
    gain = torch.rand(len(LENGTHS), 1, 13) * 3 + 0.3
    offset = torch.randn(len(LENGTHS), 1, 13) * 3
    with torch.no_grad():
        same = torch.allclose(model(x, lens), model((x * gain + offset) * valid, lens), atol=1e-4)
    assert same is invariant
