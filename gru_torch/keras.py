"""Converting a Keras GRU layer's weights to gru_torch's layout.

Keras keeps `kernel [I, 3H]`, `recurrent_kernel [H, 3H]` with gate blocks in the order
z, r, h, and a bias of shape [3H] (reset_after=False, the Keras 2 default: one bias,
added on the input side) or [2, 3H] (reset_after=True: row 0 input, row 1 recurrent).
gru_torch (like nn.GRU) keeps `W_ih [3H, I]`, `W_hh [3H, H]` in gate order r, z, n.
"""
from __future__ import annotations

import numpy as np
import torch


def _reorder(m: np.ndarray, H: int) -> np.ndarray:
    """Gate blocks z, r, h along the last axis -> r, z, n."""
    z, r, h = m[..., :H], m[..., H:2 * H], m[..., 2 * H:]
    return np.concatenate([r, z, h], axis=-1)


def from_keras(weights, in_size: int, H: int, reset_after: bool) -> dict:
    """weights: the list get_weights() returns: [kernel, recurrent_kernel] or
    [kernel, recurrent_kernel, bias]. Returns tensors w_ih, w_hh, b_ih, b_hh (None where
    the cell has none)."""
    if not isinstance(weights, (list, tuple)) or len(weights) not in (2, 3):
        raise ValueError("weights must be the list a Keras GRU layer's get_weights() returns: "
                         "[kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias]")
    arrays = [np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
              for w in weights]
    kernel, recurrent = arrays[0], arrays[1]
    if kernel.shape != (in_size, 3 * H):
        raise ValueError(f"kernel must have shape {(in_size, 3 * H)} (input, 3*units), "
                         f"got {kernel.shape}")
    if recurrent.shape != (H, 3 * H):
        raise ValueError(f"recurrent_kernel must have shape {(H, 3 * H)}, got {recurrent.shape}")
    out = {
        "w_ih": torch.from_numpy(_reorder(kernel, H).T.copy()),
        "w_hh": torch.from_numpy(_reorder(recurrent, H).T.copy()),
        "b_ih": None,
        "b_hh": None,
    }
    if len(arrays) == 3:
        bias = arrays[2]
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
    return out
