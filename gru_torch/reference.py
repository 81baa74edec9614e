"""The recurrent layers in plain PyTorch: the test oracle, the fallback and the baseline.

Same arguments and semantics as the fused op (csrc/rnn.h has the shapes): one layer, one
or two directions, over the whole sequence, for every cell of the family
(gru_torch.cellspec.Cell), differentiable through autograd. Slow (a Python loop over
time) but written to be read.

Shapes (letters as in csrc/rnn.h; P = proj_size for an LSTM with projections, else H;
M = 1 for masks shared by the gates, or the number of gates):
  input [T, B, I], hx [D, B, P], cx [D, B, H] (LSTM), w_ih [D, G, I], w_hh [D, G, P],
  b_ih / b_hh [D, G], w_hr [D, P, H] (LSTM projections), input_mask [D, B, M, I],
  recurrent_mask [D, B, M, P] (or [D, B, P], shared), lengths [B]
  -> output [T, B, D*P], h_n [D, B, P], c_n [D, B, H] (LSTM; None otherwise)
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from .cellspec import Cell


def _per_gate(gates: int, H: int, operand: Tensor, mask: Tensor | None, weight: Tensor,
              bias: Tensor | None) -> Tensor:
    """operand W^T + bias with operand's mask: [..., M, K] masks, M = 1 (one for every
    gate) or `gates` (gate k reads operand * mask[k] against its rows of W)."""
    if mask is None:
        return F.linear(operand, weight, bias)
    if mask.shape[-2] == 1:
        return F.linear(operand * mask.squeeze(-2), weight, bias)
    blocks = weight.unflatten(0, (gates, H)).unbind(0)
    biases = [None] * gates if bias is None else bias.unflatten(0, (gates, H)).unbind(0)
    return torch.cat([F.linear(operand * mask.select(-2, k), w, b)
                      for k, (w, b) in enumerate(zip(blocks, biases))], dim=-1)


def _step(cell: Cell, gx: Tensor, h: Tensor, c: Tensor | None, w_hh: Tensor,
          b_hh: Tensor | None, w_hr: Tensor | None, mask: Tensor | None):
    """One step from gx = the input projection (bias included): (h', c')."""
    H = w_hh.shape[0] // cell.gates
    if cell.kind == "rnn":
        a = gx + _per_gate(1, H, h, mask, w_hh, b_hh)
        return (torch.tanh(a) if cell.activation == "tanh" else torch.relu(a)), None
    if cell.kind == "lstm":
        a = gx + _per_gate(4, H, h, mask, w_hh, b_hh)
        # unflatten + unbind rather than chunk: the same views, and right for H = 0 too
        i, f, g, o = a.unflatten(-1, (4, H)).unbind(-2)
        c = cell.gate(f) * c + cell.gate(i) * torch.tanh(g)
        h = cell.gate(o) * torch.tanh(c)
        return (h if w_hr is None else F.linear(h, w_hr)), c
    x_r, x_z, x_n = gx.unflatten(-1, (3, H)).unbind(-2)
    if cell.reset_after:
        h_r, h_z, h_n = _per_gate(3, H, h, mask, w_hh, b_hh).unflatten(-1, (3, H)).unbind(-2)
        r, z = cell.gate(x_r + h_r), cell.gate(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
    else:
        w_r, w_z, w_n = w_hh.unflatten(0, (3, H)).unbind(0)
        m = [None] * 3 if mask is None else [mask.select(-2, min(k, mask.shape[-2] - 1))
                                             for k in range(3)]
        hm = [h if mk is None else h * mk for mk in m]
        r = cell.gate(x_r + hm[0] @ w_r.t())
        z = cell.gate(x_z + hm[1] @ w_z.t())
        n = torch.tanh(x_n + (r * hm[2]) @ w_n.t())
    return (1 - z) * n + z * h, None


def rnn_layer_reference(cell: Cell, input: Tensor, hx: Tensor, cx: Tensor | None,
                        w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                        w_hr: Tensor | None, input_mask: Tensor | None,
                        recurrent_mask: Tensor | None, lengths: Tensor | None
                        ) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer of `cell`, every direction: see the module's docstring for the shapes."""
    D = w_ih.shape[0]
    G = w_ih.shape[1]
    H = G // cell.gates
    if recurrent_mask is not None and recurrent_mask.dim() == 3:
        recurrent_mask = recurrent_mask.unsqueeze(2)  # [D, B, P]: one mask for every gate
    gx = []
    for d in range(D):
        in_mask = None if input_mask is None else input_mask[d].unsqueeze(0)
        # unbind, not gx[t]: each select's backward writes a full-size zero gradient
        gx.append(_per_gate(cell.gates, H, input, in_mask, w_ih[d],
                            None if b_ih is None else b_ih[d]).unbind(0))
    return _directions(cell, gx, hx, cx, w_hh, b_hh, w_hr, recurrent_mask, lengths)


def _directions(cell: Cell, gx: list, hx: Tensor, cx: Tensor | None, w_hh: Tensor,
                b_hh, w_hr, mask, lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every direction's loop over time from its input projection: gx[d] holds the T
    steps' [B, G] slices of direction d; b_hh, w_hr and mask are indexed by direction (or
    None). Returns (output [T, B, D*P], h_n, c_n or None)."""
    T = len(gx[0])
    outputs, finals, cells = [], [], []
    for d, rows in enumerate(gx):
        def pick(t):
            return None if t is None else t[d]

        h, c = hx[d], pick(cx)
        steps: list[Tensor] = [None] * T  # type: ignore[list-item]
        for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
            h_new, c_new = _step(cell, rows[t], h, c, w_hh[d], pick(b_hh), pick(w_hr), pick(mask))
            if lengths is not None:
                active = (t < lengths).unsqueeze(-1)
                h = torch.where(active, h_new, h)
                c = None if c is None else torch.where(active, c_new, c)
                steps[t] = torch.where(active, h_new, torch.zeros_like(h_new))
            else:
                h, c = h_new, c_new
                steps[t] = h_new
        outputs.append(torch.stack(steps))
        finals.append(h)
        cells.append(c)
    c_n = torch.stack(cells) if cell.has_c else None
    return torch.cat(outputs, dim=-1), torch.stack(finals), c_n


def gru_layer_reference(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Tensor | None, b_hh: Tensor | None, mask: Tensor | None,
                        lengths: Tensor | None, reset_after: bool) -> tuple[Tensor, Tensor]:
    """The GRU layer with the fused GRU op's arguments (csrc/gru.h): input [T, B, I], hx
    [D, B, H], w_ih [D, 3H, I], w_hh [D, 3H, H], b_ih/b_hh [D, 3H], mask [D, B, H] (scaled),
    lengths [B] -> output [T, B, D*H], h_n [D, B, H]."""
    out, h_n, _ = rnn_layer_reference(Cell("gru", reset_after), input, hx, None, w_ih, w_hh,
                                      b_ih, b_hh, None, None, mask, lengths)
    return out, h_n


def family_layer_reference(cell: Cell, gx: Tensor, hx: Tensor, cx: Tensor | None,
                           w_hh: Tensor, b_hn: Tensor | None, mask: Tensor | None,
                           lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The family op (gru_torch.ops.family_layer) in plain torch: from the input
    projection gx [T, B, D, G], with b_hn [D, H] the GRU's n bias (reset_after=True) and
    mask [D, B, M, H]; returns (output [T, B, D*H], h_n, c_n or None)."""
    D, H = gx.shape[2], hx.shape[-1]
    b_hh = None if b_hn is None else torch.cat([b_hn.new_zeros(D, 2 * H), b_hn], 1)
    return _directions(cell, [gx[:, :, d].unbind(0) for d in range(D)], hx, cx, w_hh, b_hh,
                       None, mask, lengths)
