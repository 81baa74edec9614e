"""Keras's default initializers, for models that should start where a Keras model starts.

Keras stores a recurrent layer's kernel as [input, gates * H] and its recurrent kernel as
[H, gates * H]; PyTorch stores their transposes, one matrix over all gates. Keras draws
each as a whole, so the limits below use the whole matrix's fans:

- `glorot_uniform_`: U(+-sqrt(6 / (fan_in + fan_out))), Keras's default for every kernel
  (Dense, recurrent input kernels, and the one-hot GRU's input kernel).
- `orthogonal_`: the recurrent kernel. Keras makes the [H, gates * H] matrix's rows
  orthonormal; PyTorch's [gates * H, H] transpose then has orthonormal columns.
- `zeros_`: every bias.
- `unit_forget_bias_`: an LSTM's forget-gate bias starts at 1 (Jozefowicz et al. 2015).
  Keras's gate order i, f, c, o and PyTorch's i, f, g, o put it in the same slice.
- `embedding_uniform_`: Keras's Embedding, U(+-0.05).

`keras_recurrent_init_` applies them to a `gru_torch.GRU`, an nn.GRU / nn.LSTM / nn.RNN,
gru_torch.LSTM or gru_torch.RNN (one bias or two), by parameter name.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def glorot_uniform_(weight: Tensor) -> Tensor:
    """Glorot (Xavier) uniform over a [fan_out, fan_in] weight, as Keras draws it."""
    if weight.dim() != 2:
        raise ValueError(f"glorot_uniform_ needs a 2-D weight, got shape {tuple(weight.shape)}")
    fan_out, fan_in = weight.shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return weight.uniform_(-limit, limit)


@torch.no_grad()
def orthogonal_(weight: Tensor, gain: float = 1.0) -> Tensor:
    """A (semi-)orthogonal matrix, the transpose of Keras's recurrent kernel."""
    if weight.dim() != 2:
        raise ValueError(f"orthogonal_ needs a 2-D weight, got shape {tuple(weight.shape)}")
    return nn.init.orthogonal_(weight, gain=gain)


@torch.no_grad()
def zeros_(tensor: Tensor) -> Tensor:
    return tensor.zero_()


@torch.no_grad()
def unit_forget_bias_(bias: Tensor, hidden_size: int) -> Tensor:
    """Zeros, with the forget gate's slice [H, 2H) set to 1."""
    if bias.shape != (4 * hidden_size,):
        raise ValueError(f"an LSTM bias of hidden size {hidden_size} has shape "
                         f"({4 * hidden_size},), got {tuple(bias.shape)}")
    bias.zero_()
    bias[hidden_size:2 * hidden_size] = 1.0
    return bias


@torch.no_grad()
def embedding_uniform_(weight: Tensor, limit: float = 0.05) -> Tensor:
    return weight.uniform_(-limit, limit)


@torch.no_grad()
def keras_recurrent_init_(module: nn.Module) -> nn.Module:
    """Keras's defaults on a recurrent layer: glorot_uniform input kernels, orthogonal
    recurrent kernels, zero biases, and a unit forget bias for an LSTM. Only an LSTM's
    first bias vector of a pair gets the 1, so b_ih + b_hh starts at 1 as in Keras."""
    H = module.hidden_size
    is_lstm = module.weight_hh_l0.shape[0] == 4 * H
    for name, p in module.named_parameters():
        if name.startswith("weight_ih"):
            glorot_uniform_(p)
        elif name.startswith("weight_hh"):
            orthogonal_(p)
        elif name.startswith("bias"):
            if is_lstm and not name.startswith("bias_hh"):
                unit_forget_bias_(p, H)
            else:
                zeros_(p)
        else:
            raise ValueError(f"keras_recurrent_init_ does not know parameter {name!r}")
    return module


@torch.no_grad()
def keras_dense_init_(linear: nn.Linear) -> nn.Linear:
    glorot_uniform_(linear.weight)
    if linear.bias is not None:
        zeros_(linear.bias)
    return linear
