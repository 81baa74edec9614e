"""nn.GRU's and nn.GRUCell's argument checks, mirrored.

Every check here raises the exception type that torch.nn raises for the same argument,
with torch.nn's message first (so code and tests that match it keep matching) and
gru_torch's detail after it. The checks run in torch.nn's order, so that an argument
list with several faults fails on the same one.
"""
from __future__ import annotations

import numbers
import operator
import warnings

import torch
from torch import Tensor

from . import backends

# torch.nn's messages, verbatim (torch/nn/modules/rnn.py and aten/src/ATen/native/RNN.cpp).
DROPOUT_RANGE = ("dropout should be a number in range [0, 1] representing the probability "
                 "of an element being zeroed")
PROJ_SIZE = "proj_size argument is only supported for LSTM, not RNN or GRU"
EMPTY_SEQUENCE = "Expected sequence length to be larger than 0 in RNN"

NOT_GIVEN = object()  # a keyword's default that tells "not passed" from any value


def reraise(error: Exception, detail: str):
    """Raises `error`'s type again with its own message first and `detail` after it."""
    raise type(error)(f"{error} ({detail})") from error


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def check_size(name: str, value) -> int:
    """input_size / hidden_size as nn.RNNBase checks them: an int (bool included, as
    Python counts it one) greater than zero."""
    if not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return value


def check_num_layers(value):
    """nn.RNNBase compares num_layers with 0 and then builds range(num_layers): what either
    step rejects, it rejects with that step's TypeError."""
    detail = f"num_layers should be a positive int, got {value!r}"
    try:
        not_positive = value <= 0
    except TypeError as e:
        reraise(e, detail)
    if not_positive:
        raise ValueError(f"num_layers must be greater than zero ({detail})")
    try:
        operator.index(value)
    except TypeError as e:
        reraise(e, detail)
    return value


def check_probability(name: str, value) -> float:
    """A dropout rate as nn.RNNBase checks `dropout`: float() must accept it, and it must
    be a number (not a bool) in [0, 1]."""
    detail = f"{name} must be a number in [0, 1], got {value!r}"
    try:
        as_float = float(value)
    except (TypeError, ValueError) as e:
        reraise(e, detail)
    if isinstance(value, bool) or not isinstance(value, numbers.Number) or not 0 <= value <= 1:
        message = DROPOUT_RANGE if name == "dropout" else DROPOUT_RANGE.replace("dropout", name, 1)
        raise ValueError(f"{message} ({detail})")
    return as_float


def check_gru_args(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                   bidirectional, proj_size, reset_after, recurrent_dropout, backend) -> float:
    """All of GRU's constructor arguments, in nn.GRU's order, then gru_torch's own.
    Returns dropout as a float (nn.GRU stores float(dropout))."""
    if proj_size is not NOT_GIVEN:
        raise ValueError(f"{PROJ_SIZE} (gru_torch.GRU has no projections either)")
    dropout_value = check_probability("dropout", dropout)
    if dropout > 0 and num_layers == 1:
        # stacklevel 3: the warning points at the line that built the GRU, as nn.GRU's does
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
    check_bool("bias", bias)
    check_bool("batch_first", batch_first)
    # nn.GRU accepts any value here and fails in its first forward with a TypeError;
    # a truthy non-bool would otherwise build a second direction nobody asked for.
    check_bool("bidirectional", bidirectional)
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    check_num_layers(num_layers)
    check_bool("reset_after", reset_after)
    check_probability("recurrent_dropout", recurrent_dropout)
    backends.check_backend(backend)
    return dropout_value


def check_cell_extras(reset_after, recurrent_dropout, backend) -> None:
    """GRUCell's own arguments (nn.GRUCell checks none of the shared ones: torch.empty
    rejects what cannot size a weight)."""
    check_bool("reset_after", reset_after)
    check_probability("recurrent_dropout", recurrent_dropout)
    backends.check_backend(backend)


# ---------------------------------------------------------------- forward messages
def tensor_dim(value, name: str) -> int:
    """value.dim(), failing as torch.nn does on a non-tensor (an AttributeError)."""
    try:
        return value.dim()
    except AttributeError as e:
        reraise(e, f"{name} must be a Tensor, got {type(value).__name__}")


def input_dtype_message(input_dtype: torch.dtype, weight_dtype: torch.dtype) -> str:
    return (f"RNN input dtype ({input_dtype}) does not match weight dtype ({weight_dtype}). "
            f"Convert input: input.to({weight_dtype}), or convert model: model.to({input_dtype})")


def linear_error(x: Tensor, weight: Tensor, with_bias: bool) -> str | None:
    """The error torch.nn's RNN kernels raise when `x` (an input or a state) meets a
    weight of another dtype or device, or None when they agree. The kernels fail in the
    linear inside the cell; the same linear on one-element stand-ins raises the same
    message, whatever this torch version words it as."""
    if x.dtype == weight.dtype and x.device == weight.device:
        return None
    xs = torch.zeros(1, 1, dtype=x.dtype, device=x.device)
    ws = torch.zeros(1, 1, dtype=weight.dtype, device=weight.device)
    bs = torch.zeros(1, dtype=weight.dtype, device=weight.device) if with_bias else None
    try:
        torch.nn.functional.linear(xs, ws, bs)
    except RuntimeError as e:
        return str(e)
    return f"expected {x.dtype} on {x.device} to match the weights' {weight.dtype} on {weight.device}"
