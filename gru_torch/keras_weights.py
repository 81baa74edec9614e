"""Converting a Keras recurrent layer's weights (get_weights()) to gru_torch's layout.

Keras keeps `kernel [I, G]`, `recurrent_kernel [H, G]` and (with use_bias) a bias, with
G = gates * units:
- GRU: gate blocks z, r, h; bias [3H] (reset_after=False, the Keras 2 default: one bias,
  added on the input side) or [2, 3H] (reset_after=True: row 0 input, row 1 recurrent);
- LSTM: gate blocks i, f, c, o (PyTorch's i, f, g, o); one bias [4H];
- SimpleRNN: [I, H], [H, H] and one bias [H].
gru_torch (like nn) keeps `W_ih [G, I]`, `W_hh [G, H]`, gate order r, z, n for the GRU.
"""
from __future__ import annotations

import numpy as np
import torch

from .cellspec import Cell

_KERAS_NAMES = {"gru": "GRU", "lstm": "LSTM", "rnn": "SimpleRNN"}


def _reorder(m: np.ndarray, H: int) -> np.ndarray:
    """GRU gate blocks z, r, h along the last axis -> r, z, n."""
    z, r, h = m[..., :H], m[..., H:2 * H], m[..., 2 * H:]
    return np.concatenate([r, z, h], axis=-1)


def convert_weights(weights, cell: Cell, in_size: int, H: int) -> dict:
    """weights: the list a Keras layer's (or cell's) get_weights() returns: [kernel,
    recurrent_kernel] or [kernel, recurrent_kernel, bias]. Returns tensors w_ih, w_hh,
    b_ih, b_hh (None where the cell has none)."""
    name = _KERAS_NAMES[cell.kind]
    if not isinstance(weights, (list, tuple)) or len(weights) not in (2, 3):
        raise ValueError(f"weights must be the list a Keras {name} layer's get_weights() "
                         "returns: [kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias]")
    arrays = [np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
              for w in weights]
    G = cell.gates * H
    kernel, recurrent = arrays[0], arrays[1]
    if kernel.shape != (in_size, G):
        raise ValueError(f"kernel must have shape {(in_size, G)} (input, {cell.gates}*units) for "
                         f"a Keras {name} of {H} units on {in_size} inputs, got {kernel.shape}")
    if recurrent.shape != (H, G):
        raise ValueError(f"recurrent_kernel must have shape {(H, G)}, got {recurrent.shape}")
    order = (lambda m: _reorder(m, H)) if cell.kind == "gru" else (lambda m: m)
    out = {"w_ih": torch.from_numpy(order(kernel).T.copy()),
           "w_hh": torch.from_numpy(order(recurrent).T.copy()), "b_ih": None, "b_hh": None}
    if len(arrays) == 3:
        bias = arrays[2]
        if cell.kind == "gru":
            _gru_bias(bias, H, cell.reset_after, out)
        elif bias.shape == (G,):
            out["b_ih"] = torch.from_numpy(bias.copy())
        else:
            raise ValueError(f"bias must have shape {(G,)} for a Keras {name}, got {bias.shape}")
    return out


def _gru_bias(bias: np.ndarray, H: int, reset_after: bool, out: dict) -> None:
    if bias.shape == (3 * H,):
        if reset_after:
            raise ValueError("bias of shape (3*units,) comes from a reset_after=False Keras "
                             "layer; build the GRU with reset_after=False")
        out["b_ih"] = torch.from_numpy(_reorder(bias, H).copy())
    elif bias.shape == (2, 3 * H):
        if not reset_after:
            raise ValueError("bias of shape (2, 3*units) comes from a reset_after=True Keras "
                             "layer; build the GRU with reset_after=True")
        out["b_ih"] = torch.from_numpy(_reorder(bias[0], H).copy())
        out["b_hh"] = torch.from_numpy(_reorder(bias[1], H).copy())
    else:
        raise ValueError(f"bias must have shape {(3 * H,)} (reset_after=False) or "
                         f"{(2, 3 * H)} (reset_after=True), got {bias.shape}")


def from_keras(weights, in_size: int, H: int, reset_after: bool) -> dict:
    """A GRU's weights (convert_weights for Cell("gru", reset_after))."""
    return convert_weights(weights, Cell("gru", reset_after), in_size, H)


@torch.no_grad()
def copy_into(module, names: list[str], converted: dict, what: str) -> None:
    """Copies converted weights into module's parameters `names` (w_ih, w_hh, then its
    biases): a bias the module has and the Keras layer has not becomes 0."""
    getattr(module, names[0]).copy_(converted["w_ih"])
    getattr(module, names[1]).copy_(converted["w_hh"])
    biases = {("b_ih" if n.startswith("bias_ih") else "b_hh"): n for n in names[2:]
              if n.startswith("bias") and getattr(module, n, None) is not None}
    if converted.get("b_ih") is not None and not biases:
        raise ValueError(f"load_keras_weights: the Keras layer has a bias but this {what} was "
                         "built with bias=False")
    for key, name in biases.items():
        value = converted.get(key)
        target = getattr(module, name)
        target.copy_(value) if value is not None else target.zero_()
