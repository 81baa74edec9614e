"""What a recurrent cell computes: its kind, its activations, its gates and its masks.

One `Cell` describes every member of the family (nn's gate order and weight layout):

  GRU   G = 3H, gates r, z, n;  reset_after=True (nn.GRU, Keras 3) or False (Keras 2)
  LSTM  G = 4H, gates i, f, g, o; the cell state c is carried beside h
  RNN   G = H;  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act tanh or relu

The gates of a GRU or LSTM go through `recurrent_activation`, which is one of
  "sigmoid"              1 / (1 + e^-x): nn's, and Keras's default since 2.3 / TF2
  "hard_sigmoid_keras2"  clip(0.2 x + 0.5, 0, 1): standalone Keras before 2.3 and TF1's
                         tf.keras, whose default it was for GRU and LSTM
  "hard_sigmoid_keras3"  clip(x / 6 + 0.5, 0, 1) = relu6(x + 3) / 6: Keras 3's
                         hard_sigmoid, and torch's nn.Hardsigmoid
Keras calls both hard sigmoids "hard_sigmoid"; that name is refused here, with the
two names above in the message, rather than read as one of them.

Dropout masks are drawn once per sequence and layer-direction, in training only, and
scaled by 1/(1-p). `dropout_masks` says whether the gates share one mask ("shared": one
[B, H] mask for h, as tf.keras 2's implementation 2 and gru_torch's GRU) or each gate has
its own ("per_gate": Keras 3, and Keras 2's implementation 1): a mask tensor is then
[..., M, H] with M = 1 or the number of gates, gate k's recurrent product reading
(h * m_k) W_hk^T, and its input product (x * m_k) W_ik^T for the input masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("gru", "lstm", "rnn")
GATES = {"gru": 3, "lstm": 4, "rnn": 1}
RECURRENT_ACTIVATIONS = ("sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3")
RNN_ACTIVATIONS = ("tanh", "relu")
DROPOUT_MASKS = ("shared", "per_gate")

AMBIGUOUS_HARD_SIGMOID = (
    "'hard_sigmoid' names two different functions: Keras 2's clip(0.2*x + 0.5, 0, 1) "
    "(standalone Keras before 2.3, TF1's tf.keras) and Keras 3's clip(x/6 + 0.5, 0, 1); "
    "say 'hard_sigmoid_keras2' or 'hard_sigmoid_keras3'")


def check_recurrent_activation(value) -> str:
    if value == "hard_sigmoid":
        raise ValueError(f"recurrent_activation: {AMBIGUOUS_HARD_SIGMOID}")
    if not isinstance(value, str) or value not in RECURRENT_ACTIVATIONS:
        raise ValueError(f"recurrent_activation must be one of {RECURRENT_ACTIVATIONS}, got "
                         f"{value!r}")
    return value


def check_dropout_masks(value) -> str:
    if not isinstance(value, str) or value not in DROPOUT_MASKS:
        raise ValueError(f"dropout_masks must be one of {DROPOUT_MASKS} (one mask shared by "
                         f"the gates, or one per gate), got {value!r}")
    return value


def hard_sigmoid_keras2(x: Tensor) -> Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def hard_sigmoid_keras3(x: Tensor) -> Tensor:
    return torch.clamp(x / 6 + 0.5, 0.0, 1.0)


GATE_FUNCTIONS = {"sigmoid": torch.sigmoid, "hard_sigmoid_keras2": hard_sigmoid_keras2,
                  "hard_sigmoid_keras3": hard_sigmoid_keras3}


@dataclass(frozen=True)
class Cell:
    """One cell of the family; see the module's docstring."""
    kind: str = "gru"
    reset_after: bool = True                # GRU only
    activation: str = "tanh"                # RNN only: tanh or relu
    recurrent_activation: str = "sigmoid"   # GRU and LSTM gates

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cell kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in RNN_ACTIVATIONS:
            raise ValueError(f"activation must be one of {RNN_ACTIVATIONS}, got {self.activation!r}")
        check_recurrent_activation(self.recurrent_activation)

    @property
    def gates(self) -> int:
        return GATES[self.kind]

    @property
    def has_c(self) -> bool:
        return self.kind == "lstm"

    @property
    def nn_mode(self) -> str:
        """nn.RNNBase's mode string."""
        if self.kind == "rnn":
            return "RNN_TANH" if self.activation == "tanh" else "RNN_RELU"
        return self.kind.upper()

    def gate(self, x: Tensor) -> Tensor:
        return GATE_FUNCTIONS[self.recurrent_activation](x)

    def nn_reason(self) -> str | None:
        """Why torch.nn's kernels (and cuDNN) cannot compute this cell, or None."""
        if self.kind == "gru" and not self.reset_after:
            return "nn.GRU has no reset_after=False cell"
        if self.kind != "rnn" and self.recurrent_activation != "sigmoid":
            return (f"torch.nn's {self.kind.upper()} gates are sigmoids, not "
                    f"{self.recurrent_activation}")
        return None

    def describe(self) -> str:
        if self.kind == "rnn":
            return f"RNN ({self.activation})"
        extra = [] if self.recurrent_activation == "sigmoid" else [self.recurrent_activation]
        if self.kind == "gru" and not self.reset_after:
            extra.insert(0, "reset_after=False")
        return self.kind.upper() + (f" ({', '.join(extra)})" if extra else "")


def mask_width(masks: str, cell: Cell) -> int:
    """M, the masks per layer-direction and row: 1, or one per gate."""
    return cell.gates if masks == "per_gate" else 1


class GRUOptions:
    """What GRU and GRUCell add to their bases: the cell's options, their checks, and
    Keras's one bias where reset_after=False (mixed in before RNNBase / RNNCellBase)."""

    def _own_checks(self, single_bias) -> dict:
        return {"reset_after": self.reset_after,
                "recurrent_activation": self.recurrent_activation}

    @property
    def cell(self) -> Cell:
        return Cell("gru", reset_after=self.reset_after,
                    recurrent_activation=self.recurrent_activation)

    @property
    def _two_biases(self) -> bool:
        return self.reset_after  # reset_after=False keeps Keras's one bias

    def _own_options(self):
        return [("reset_after", True), ("recurrent_activation", "sigmoid")] + [
            o for o in super()._own_options() if o[0] != "single_bias"]


class LSTMOptions:
    """What LSTM and LSTMCell add to their bases: the gates' function and its checks."""

    def _own_checks(self, single_bias) -> dict:
        return {"single_bias": single_bias, "recurrent_activation": self.recurrent_activation}

    @property
    def cell(self) -> Cell:
        return Cell("lstm", recurrent_activation=self.recurrent_activation)

    def _own_options(self):
        return [("recurrent_activation", "sigmoid")] + super()._own_options()
