"""gru_torch.LSTM: a drop-in for torch.nn.LSTM with Keras's gates, bias and dropout.

Same constructor (proj_size included), parameter names, state_dict, forward with
(h_0, c_0) and (h_n, c_n), and errors as nn.LSTM (rnn_base.py holds what the family
shares), plus (keyword-only) `recurrent_activation`, `single_bias`, `recurrent_dropout`,
`input_dropout`, `dropout_masks`, `backend`, and `forward(..., lengths=)`.
"""
from __future__ import annotations

from torch import nn

from .cellspec import LSTMOptions
from .rnn_base import RNNBase


class LSTM(LSTMOptions, RNNBase):
    """Multi-layer LSTM. See torch.nn.LSTM for the shared arguments.

    Extra keyword-only arguments:
      recurrent_activation: the gates' function (i, f, o): "sigmoid" (nn's),
        "hard_sigmoid_keras2" or "hard_sigmoid_keras3" (see gru_torch.cellspec).
      single_bias: one bias vector per layer-direction (`bias_ih_l{k}`), as Keras keeps
        it, instead of nn's two; the parameter count is then Keras's.
      recurrent_dropout, input_dropout, dropout_masks, backend: as gru_torch.GRU's.
    """

    _name = "LSTM"
    _nn_class = nn.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *,
                 recurrent_activation: str = "sigmoid", single_bias: bool = False,
                 recurrent_dropout: float = 0.0, input_dropout: float = 0.0,
                 dropout_masks: str = "shared", backend: str = "auto") -> None:
        self.recurrent_activation = recurrent_activation
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, single_bias=single_bias,
                         recurrent_dropout=recurrent_dropout, input_dropout=input_dropout,
                         dropout_masks=dropout_masks, backend=backend)

    def _nn_kwargs(self) -> dict:
        return {"proj_size": self.proj_size}

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict:
        return {"proj_size": module.proj_size}
