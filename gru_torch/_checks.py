"""nn.GRU's, nn.LSTM's and nn.RNN's (and their cells') argument checks, mirrored.

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

from . import backends, cellspec

NOT_GIVEN = object()  # a keyword's default that tells "not passed" from any value

# torch.nn's messages, verbatim (torch/nn/modules/rnn.py and aten/src/ATen/native/RNN.cpp).
DROPOUT_RANGE = ("dropout should be a number in range [0, 1] representing the probability "
                 "of an element being zeroed")
PROJ_SIZE = "proj_size argument is only supported for LSTM, not RNN or GRU"
PROJ_NEGATIVE = "proj_size should be a positive integer or zero to disable projections"
PROJ_TOO_LARGE = "proj_size has to be smaller than hidden_size"
EMPTY_SEQUENCE = "Expected sequence length to be larger than 0 in RNN"



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


def check_rnn_args(name: str, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                   bidirectional, proj_size=0) -> float:
    """nn.RNNBase's checks of the shared arguments, in its order (name: "GRU", "LSTM" or
    "RNN"; proj_size is an LSTM's). Returns dropout as a float (nn stores float(dropout))."""
    dropout_value = check_probability("dropout", dropout)
    if dropout > 0 and num_layers == 1:
        # stacklevel 4: the warning points at the line that built the module, as nn's does
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", stacklevel=4)
    check_bool("bias", bias)
    check_bool("batch_first", batch_first)
    # nn accepts any value here and fails in its first forward with a TypeError; a
    # truthy non-bool would otherwise build a second direction nobody asked for.
    check_bool("bidirectional", bidirectional)
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    check_num_layers(num_layers)
    if proj_size < 0:  # nn compares as it stands, failing with a TypeError on a non-number
        raise ValueError(f"{PROJ_NEGATIVE} (got proj_size={proj_size!r})")
    if proj_size >= hidden_size:
        raise ValueError(f"{PROJ_TOO_LARGE} (got proj_size={proj_size!r}, "
                         f"hidden_size={hidden_size!r})")
    return dropout_value


def check_extras(recurrent_dropout, input_dropout, dropout_masks, backend,
                 recurrent_activation=NOT_GIVEN, reset_after=NOT_GIVEN,
                 single_bias=NOT_GIVEN) -> None:
    """gru_torch's own arguments (NOT_GIVEN: not an argument of this module)."""
    if reset_after is not NOT_GIVEN:
        check_bool("reset_after", reset_after)
    if recurrent_activation is not NOT_GIVEN:
        cellspec.check_recurrent_activation(recurrent_activation)
    if single_bias is not NOT_GIVEN:
        check_bool("single_bias", single_bias)
    check_probability("recurrent_dropout", recurrent_dropout)
    check_probability("input_dropout", input_dropout)
    cellspec.check_dropout_masks(dropout_masks)
    backends.check_backend(backend)


def check_nonlinearity(value) -> str:
    """nn.RNN's `nonlinearity`."""
    if value not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{value}'. Select from 'tanh' or 'relu'.")
    return value


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
