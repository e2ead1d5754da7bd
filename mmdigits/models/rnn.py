"""Recurrent layers that read each row of a zero-padded batch only up to its length (without packing)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first ``lengths[b]`` frames of each row of x (B, T, C); padded frames stay in place.

    Its own inverse, so it also puts outputs computed on reversed rows back in time order.
    """
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]
    lengths = lengths.to(device=x.device, dtype=torch.long)[:, None]
    src = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(1, src.unsqueeze(-1).expand_as(x))


class MaskedRNN(nn.Module):
    """Multi-layer, optionally bi-directional GRU/LSTM over zero-padded (B, T, C) batches, without packing.

    Each direction of each layer is a unidirectional RNN. The backward one reads every row reversed within
    its own length, so in both directions the padding comes after the valid frames and never reaches
    their outputs: the result is exactly that of a packed RNN, but runs as one dense RNN call per
    direction. On CPU that is 1.3-1.7x faster than packed sequences, which shrink the batch step by step;
    ``packed=True`` runs torch's packed kernel on the same weights instead (same result; it skips the
    padding, which pays when batches are padded far past most of their rows).
    Loads the state dict of the equivalent ``nn.GRU``/``nn.LSTM`` (``weight_ih_l0_reverse``, ...).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        packed: bool = False,
    ) -> None:
        super().__init__()
        cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.hidden_size, self.num_layers, self.bidirectional = hidden_size, num_layers, bidirectional
        self.packed = packed
        dirs = 2 if bidirectional else 1
        sizes = [input_size] + [hidden_size * dirs] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.ModuleList(cls(n, hidden_size, batch_first=True) for _ in range(dirs)) for n in sizes
        )
        # packed mode runs torch's own (bi-directional) packed kernel on these weights; a plain list keeps
        # the templates out of the state dict, and dense mode needs none
        self._templates = (
            [cls(n, hidden_size, batch_first=True, bidirectional=bidirectional) for n in sizes]
            if packed
            else []
        )
        self.drop = nn.Dropout(dropout if num_layers > 1 else 0.0)
        self.out_dim = hidden_size * dirs

    def forward(self, x: Tensor, lengths: Tensor, outputs: bool = True) -> tuple[Tensor | None, Tensor]:
        """x (B, T, C) -> (outputs (B, T, out_dim) in time order, meaningful on valid frames only, or None
        when not asked for; last (B, out_dim): the forward state after each row's last frame and the
        backward state after its first)."""
        for i in range(self.num_layers):
            x_in = self.drop(x) if i > 0 else x
            if self.packed:
                x, last = self._packed_layer(i, x_in, lengths, unpack=outputs or i < self.num_layers - 1)
            else:
                x = self._dense_layer(i, x_in, lengths)
        if not self.packed:
            at_last = (lengths.to(device=x.device, dtype=torch.long) - 1).view(-1, 1, 1)
            last = x.gather(1, at_last.expand(-1, 1, x.shape[-1]))[:, 0]
            if self.bidirectional:  # the backward direction ends on the first frame
                last = torch.cat([last[:, : self.hidden_size], x[:, 0, self.hidden_size :]], dim=-1)
        return x, last

    def _dense_layer(self, i: int, x: Tensor, lengths: Tensor) -> Tensor:
        directions = self.layers[i]
        out = [directions[0](x)[0]]
        if self.bidirectional:
            backward = directions[1](reverse_within_lengths(x, lengths))[0]
            out.append(reverse_within_lengths(backward, lengths))
        return torch.cat(out, dim=-1)

    def _packed_layer(self, i: int, x: Tensor, lengths: Tensor, unpack: bool) -> tuple[Tensor | None, Tensor]:
        weights = {
            f"{name}{'_reverse' if d else ''}": p
            for d, rnn in enumerate(self.layers[i])
            for name, p in rnn.named_parameters()
        }
        seq = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = functional_call(self._templates[i], weights, (seq,))
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c)
        last = torch.cat(list(h), dim=-1)
        if not unpack:  # unpacking costs about as much as the RNN's backward direction
            return None, last
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], last

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # nn.GRU/nn.LSTM names (older checkpoints): weight_ih_l{k}[_reverse] -> layers.{k}.{dir}.weight_ih_l0
        pattern = re.compile(re.escape(prefix) + r"((?:weight|bias)_(?:ih|hh))_l(\d+)(_reverse)?$")
        for key in [k for k in state_dict if pattern.match(k)]:
            name, layer, rev = pattern.match(key).groups()
            state_dict[f"{prefix}layers.{layer}.{int(bool(rev))}.{name}_l0"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
