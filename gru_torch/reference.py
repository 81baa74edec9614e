"""The GRU layer in plain PyTorch: the test oracle and the last fallback.

Same arguments and semantics as the fused op (see csrc/gru.h for the shapes):
one layer, one or two directions, over the whole sequence, differentiable through
autograd. Slow (a Python loop over time) but written to be read.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _cell(x_gates: Tensor, h: Tensor, hm: Tensor, w_hh: Tensor, b_hh: Tensor | None,
          reset_after: bool) -> Tensor:
    """One step. x_gates: [B, 3H] = x W_ih^T + b_ih; h: [B, H]; hm: h after the
    recurrent-dropout mask, used only where h enters the recurrent product."""
    H = h.shape[-1]
    # unflatten + unbind rather than split(H): the same views, and right for H = 0 too
    x_r, x_z, x_n = x_gates.unflatten(-1, (3, H)).unbind(-2)
    w_r, w_z, w_n = w_hh.unflatten(0, (3, H)).unbind(0)
    if reset_after:
        gh = torch.nn.functional.linear(hm, w_hh, b_hh)
        h_r, h_z, h_n = gh.unflatten(-1, (3, H)).unbind(-2)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
    else:
        r = torch.sigmoid(x_r + hm @ w_r.t())
        z = torch.sigmoid(x_z + hm @ w_z.t())
        n = torch.tanh(x_n + (r * hm) @ w_n.t())
    return (1 - z) * n + z * h


def gru_layer_reference(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Tensor | None, b_hh: Tensor | None, mask: Tensor | None,
                        lengths: Tensor | None, reset_after: bool) -> tuple[Tensor, Tensor]:
    """input [T, B, I], hx [D, B, H], w_ih [D, 3H, I], w_hh [D, 3H, H], b_ih/b_hh [D, 3H],
    mask [D, B, H] (scaled), lengths [B] -> output [T, B, D*H], h_n [D, B, H]."""
    T = input.shape[0]
    D = w_ih.shape[0]
    outputs, finals = [], []
    for d in range(D):
        # unbind, not gx[t]: each select's backward writes a full-size zero gradient
        gx = torch.nn.functional.linear(input, w_ih[d], None if b_ih is None else b_ih[d]).unbind(0)
        h = hx[d]
        steps: list[Tensor] = [None] * T  # type: ignore[list-item]
        order = range(T) if d == 0 else range(T - 1, -1, -1)
        for t in order:
            hm = h if mask is None else h * mask[d]
            h_new = _cell(gx[t], h, hm, w_hh[d], None if b_hh is None else b_hh[d], reset_after)
            if lengths is not None:
                active = (t < lengths).unsqueeze(-1)
                h = torch.where(active, h_new, h)
                steps[t] = torch.where(active, h_new, torch.zeros_like(h_new))
            else:
                h = h_new
                steps[t] = h_new
        outputs.append(torch.stack(steps))
        finals.append(h)
    return torch.cat(outputs, dim=-1), torch.stack(finals)
