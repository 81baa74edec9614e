"""LSTM and SimpleRNN with Keras's single bias vector per layer-direction.

nn.LSTM and nn.RNN keep two bias vectors (b_ih and b_hh) where Keras keeps one; these
modules hold one, and run through the same ATen kernels as nn.LSTM / nn.RNN (cuDNN on
a GPU) with a zero b_hh, so their parameter counts are Keras's. Recurrent dropout
(Keras semantics: one mask per sequence on the state entering the recurrent product)
has no ATen kernel; in training it runs a plain PyTorch loop over time.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_GATES = {"lstm": 4, "rnn": 1}


class KerasRecurrent(nn.Module):
    """cell "lstm" or "rnn" (tanh SimpleRNN); batch_first input [B, T, I]. forward(x,
    lengths=None) -> (output [B, T, D*H], final hidden state [L*D, B, H])."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0) -> None:
        super().__init__()
        if not 0 <= recurrent_dropout < 1:
            raise ValueError(f"recurrent_dropout must be in [0, 1), got {recurrent_dropout!r}")
        self.recurrent_dropout = recurrent_dropout
        if cell not in _GATES:
            raise ValueError(f"cell must be 'lstm' or 'rnn', got {cell!r}")
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.bidirectional, self.dropout = bidirectional, dropout
        G, D = _GATES[cell] * hidden_size, 2 if bidirectional else 1
        self._names = []
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * D
            for sfx in (["", "_reverse"] if bidirectional else [""]):
                names = (f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}", f"bias_l{layer}{sfx}")
                self.register_parameter(names[0], nn.Parameter(torch.empty(G, in_size)))
                self.register_parameter(names[1], nn.Parameter(torch.empty(G, hidden_size)))
                self.register_parameter(names[2], nn.Parameter(torch.empty(G)))
                self._names.append(names)
        self.register_buffer("_zero_bias", torch.zeros(G), persistent=False)
        stdv = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def _flat(self) -> list[Tensor]:
        return [t for w_ih, w_hh, b in self._names
                for t in (getattr(self, w_ih), getattr(self, w_hh), getattr(self, b), self._zero_bias)]

    def _step(self, x_t: Tensor, state, w_hh: Tensor, mask: Tensor):
        """One step of the cell from the input projection x_t (bias included)."""
        if self.cell == "rnn":
            return (torch.tanh(x_t + (state * mask) @ w_hh.t()),)
        h, c = state
        i, f, g, o = (x_t + (h * mask) @ w_hh.t()).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _forward_loop(self, x: Tensor, lengths: Tensor | None):
        """Training with recurrent dropout: layer by layer, direction by direction."""
        B, T = x.shape[:2]
        keep = 1.0 - self.recurrent_dropout
        lens = (lengths.to(x.device) if lengths is not None
                else torch.full((B,), T, device=x.device))
        finals, D = [], 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                w_ih, w_hh, b = (getattr(self, n) for n in self._names[layer * D + d])
                # unbind, not gx[:, t]: each select's backward would write a full-size
                # zero gradient of gx, T times over
                gx = torch.nn.functional.linear(x, w_ih, b).unbind(1)
                mask = torch.bernoulli(x.new_full((B, self.hidden_size), keep)) / keep
                h = x.new_zeros(B, self.hidden_size)
                state = (h,) if self.cell == "rnn" else (h, torch.zeros_like(h))
                steps = [None] * T
                for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                    new = self._step(gx[t], state[0] if self.cell == "rnn" else state, w_hh, mask)
                    active = (t < lens).unsqueeze(-1)
                    state = tuple(torch.where(active, n, o) for n, o in zip(new, state))
                    steps[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
                outs.append(torch.stack(steps, dim=1))
                finals.append(state[0])
            x = torch.cat(outs, dim=-1)
            if self.dropout and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return x, torch.stack(finals)

    def forward(self, x: Tensor, lengths: Tensor | None = None):
        if self.training and self.recurrent_dropout > 0:
            return self._forward_loop(x, lengths)
        D = 2 if self.bidirectional else 1
        B = x.shape[0]
        h0 = x.new_zeros(self.num_layers * D, B, self.hidden_size)
        args = (self._flat(), True, self.num_layers, self.dropout, self.training, self.bidirectional)
        fn = torch._VF.lstm if self.cell == "lstm" else torch._VF.rnn_tanh
        hx = (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0
        if lengths is None:
            out = fn(x, hx, *args, True)
            return out[0], out[1]
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out = fn(packed.data, packed.batch_sizes, hx, *args)
        seq, _ = nn.utils.rnn.pad_packed_sequence(
            nn.utils.rnn.PackedSequence(out[0], packed.batch_sizes, packed.sorted_indices,
                                        packed.unsorted_indices),
            batch_first=True, total_length=x.shape[1])
        return seq, out[1].index_select(1, packed.unsorted_indices.to(x.device))
