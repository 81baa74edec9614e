"""gru_torch.RNN: a drop-in for torch.nn.RNN (tanh or relu; Keras's SimpleRNN).

Same constructor (nonlinearity as the fourth positional argument), parameter names,
state_dict, forward and errors as nn.RNN (rnn_base.py holds what the family shares),
plus (keyword-only) `single_bias`, `recurrent_dropout`, `input_dropout`, `dropout_masks`,
`backend`, and `forward(..., lengths=)`.
"""
from __future__ import annotations

from torch import nn

from . import _checks
from .cellspec import Cell
from .rnn_base import RNNBase


class RNN(RNNBase):
    """Multi-layer Elman RNN, h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh) with act tanh or
    relu. See torch.nn.RNN for the shared arguments; the extra keyword-only ones are
    gru_torch.LSTM's (`single_bias`: Keras's SimpleRNN keeps one bias)."""

    _name = "RNN"
    _nn_class = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 single_bias: bool = False, recurrent_dropout: float = 0.0,
                 input_dropout: float = 0.0, dropout_masks: str = "shared",
                 backend: str = "auto", proj_size=_checks.NOT_GIVEN) -> None:
        if proj_size is not _checks.NOT_GIVEN:
            raise ValueError(f"{_checks.PROJ_SIZE} (gru_torch.RNN has no projections either)")
        self.nonlinearity = _checks.check_nonlinearity(nonlinearity)
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype, single_bias=single_bias,
                         recurrent_dropout=recurrent_dropout, input_dropout=input_dropout,
                         dropout_masks=dropout_masks, backend=backend)

    @property
    def cell(self) -> Cell:
        return Cell("rnn", activation=self.nonlinearity)

    def _nn_kwargs(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict:
        return {"nonlinearity": module.nonlinearity}
