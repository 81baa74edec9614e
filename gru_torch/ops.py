"""Typed wrappers over torch.ops.gru_torch.*, with fake (meta) kernels and autograd.

`gru_layer` runs one layer (one or two directions) over a whole sequence through the
compiled op; its backward is the compiled `gru_layer_backward`. Both are registered
with torch.library, so torch.compile traces them without a graph break and
torch.library.opcheck can test them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _ext

# Devices and dtypes the compiled kernels implement. The CUDA kernel is not written
# yet: its registration only raises, so "auto" never routes CUDA tensors to it.
FUSED_DTYPES = {"cpu": (torch.float32, torch.float64)}

RESERVE_SLOTS = 5  # r, z, n, aux, h_prev per step and row (csrc/gru.h)

_registered = False


def unsupported_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused op cannot run on (device, dtype), or None when it can."""
    st = _ext.status()
    if not st.loaded:
        return f"the gru_torch extension is not built: {st.reason}"
    dtypes = FUSED_DTYPES.get(device.type)
    if dtypes is None:
        return f"the fused kernel is not implemented on {device.type} yet"
    if dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"the fused {device.type} kernel supports {names}, not {str(dtype).replace('torch.', '')}"
    return None


def _setup_context(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after, need_reserve = inputs
    out, h_n, reserve = output
    if not need_reserve:
        raise RuntimeError("gru_torch: gru_layer ran with need_reserve=False, so it cannot "
                           "be differentiated; call it with need_reserve=True")
    ctx.reset_after = reset_after
    ctx.has_b_ih = b_ih is not None
    ctx.has_b_hh = b_hh is not None
    ctx.mark_non_differentiable(reserve)
    # Otherwise autograd would fill a zero gradient as large as the reserve.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reserve)


def _backward(ctx, grad_out, grad_h_n, _grad_reserve):
    input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reserve = ctx.saved_tensors
    if grad_out is None:  # expanded, not allocated: the kernels read any strides
        T, B = input.shape[:2]
        grad_out = input.new_zeros(()).expand(T, B, w_hh.shape[0] * w_hh.shape[2])
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    grads = torch.ops.gru_torch.gru_layer_backward(
        grad_out, grad_h_n.contiguous(), input, hx, w_ih, w_hh, b_ih, b_hh,
        mask, lengths, ctx.reset_after, reserve)
    d_input, d_hx, d_w_ih, d_w_hh, d_b_ih, d_b_hh = grads
    return (d_input, d_hx, d_w_ih, d_w_hh, d_b_ih if ctx.has_b_ih else None,
            d_b_hh if ctx.has_b_hh else None, None, None, None, None)


def _fake_forward(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after, need_reserve):
    T, B, _ = input.shape
    D, G, _ = w_ih.shape
    H = G // 3
    reserve_shape = (D, T, B, RESERVE_SLOTS * H) if need_reserve else (0,)
    return (input.new_empty((T, B, D * H)), hx.new_empty(hx.shape),
            input.new_empty(reserve_shape))


def _fake_backward(grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths,
                   reset_after, reserve):
    D, G, _ = w_ih.shape
    return (input.new_empty(input.shape), hx.new_empty(hx.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_ih.new_empty((D, G)), w_ih.new_empty((D, G)))


def _register() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("gru_torch::gru_layer")(_fake_forward)
    torch.library.register_fake("gru_torch::gru_layer_backward")(_fake_backward)
    torch.library.register_autograd("gru_torch::gru_layer", _backward,
                                    setup_context=_setup_context)
    _registered = True


def gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None, mask: Tensor | None, lengths: Tensor | None,
              reset_after: bool) -> tuple[Tensor, Tensor]:
    """The fused layer: shapes as in csrc/gru.h. Returns (output, h_n)."""
    if not _ext.status().loaded:
        raise RuntimeError(f"gru_torch: the fused op is unavailable: {_ext.status().reason}. "
                           + _ext.HOW_TO_BUILD)
    _register()
    params = (input, hx, w_ih, w_hh, b_ih, b_hh)
    need_reserve = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in params)
    out, h_n, _ = torch.ops.gru_torch.gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, mask,
                                                lengths, reset_after, need_reserve)
    return out, h_n
