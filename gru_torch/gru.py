"""gru_torch.GRU: a drop-in for torch.nn.GRU with Keras's cells and dropout.

Same constructor, parameter names, state_dict, forward and errors as nn.GRU (rnn_base.py
holds what the family shares), plus (keyword-only) `reset_after`, `recurrent_activation`,
`recurrent_dropout`, `input_dropout`, `dropout_masks`, `backend`, and
`forward(..., lengths=)`.
"""
from __future__ import annotations

from torch import nn

from . import _checks
from .cellspec import GRUOptions
from .rnn_base import RNNBase, draw_mask

draw_recurrent_mask = draw_mask  # the name GRUCell and earlier code know it by


class GRU(GRUOptions, RNNBase):
    """Multi-layer GRU. See torch.nn.GRU for the shared arguments.

    Extra keyword-only arguments:
      reset_after: True (nn.GRU, cuDNN, Keras 3) applies the reset gate after the
        recurrent product; False is the Cho (2014) / Keras 2 cell,
        n = tanh(W_in x + (r * h) W_hn^T + b_n), with one bias vector per layer and
        direction (`bias_ih_l{k}`), as Keras keeps it.
      recurrent_activation: the gates' function, "sigmoid" (nn's), "hard_sigmoid_keras2"
        (clip(0.2x + 0.5, 0, 1): standalone Keras before 2.3, TF1) or "hard_sigmoid_keras3"
        (clip(x/6 + 0.5, 0, 1)); see gru_torch.cellspec.
      recurrent_dropout: variational dropout on the recurrent state (Keras semantics):
        masks drawn once per sequence and layer-direction, applied where h enters the
        recurrent product, in training only.
      input_dropout: Keras's `dropout`, on each layer's input the same way.
      dropout_masks: "shared" (one mask for every gate) or "per_gate" (one per gate, as
        Keras 3 and Keras 2's implementation 1 draw them).
      backend: "auto" (fused op, else nn.GRU, else the reference loop), or one forced.
    `proj_size` is there only to be refused as nn.GRU refuses it (a ValueError).
    """

    _name = "GRU"
    _nn_class = nn.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True,
                 recurrent_activation: str = "sigmoid", recurrent_dropout: float = 0.0,
                 input_dropout: float = 0.0, dropout_masks: str = "shared",
                 backend: str = "auto", proj_size=_checks.NOT_GIVEN) -> None:
        if proj_size is not _checks.NOT_GIVEN:
            raise ValueError(f"{_checks.PROJ_SIZE} (gru_torch.GRU has no projections either)")
        self.reset_after = reset_after
        self.recurrent_activation = recurrent_activation
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, recurrent_dropout=recurrent_dropout,
                         input_dropout=input_dropout, dropout_masks=dropout_masks,
                         backend=backend)

