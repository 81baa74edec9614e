"""Typed wrappers over torch.ops.gru_torch.*, with fake (meta) kernels and autograd.

`gru_layer` runs one layer (one or two directions) over a whole sequence through the
compiled op; its backward is the compiled `gru_layer_backward`, itself differentiable
(see _backward_autograd.py) for double backward. Both are registered
with torch.library, so torch.compile traces them without a graph break and
torch.library.opcheck can test them. Inside `gru_torch.testing.emulate_cuda()`, CPU
tensors go to `gru_layer_emulated` / `gru_layer_backward_emulated` instead: the CUDA
kernels, compiled for the host, under the emulator.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import _backward_autograd, _ext, testing
from .cellspec import Cell

# Devices and dtypes the compiled kernels implement: the C++ CPU op, and the CUDA
# kernels (persistent for 16-bit and TF32 float32 up to H = 128, per-step otherwise),
# which also run on CPU tensors under the emulator.
FUSED_DTYPES = {"cpu": (torch.float32, torch.float64),
                "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16)}

RESERVE_SLOTS = 5  # r, z, n, aux, h_prev per step and row (csrc/gru.h)
CPU_RESERVE_SLOTS = 3  # the C++ CPU op's: r, z, aux; the states are read from the output
                       # (csrc/cpu_layer.h)


def reserve_shape(device: torch.device, emulated: bool, D: int, T: int, B: int,
                  H: int) -> tuple[int, ...]:
    """The reserve gru_layer returns on `device` (the emulated CUDA kernels keep the CUDA one)."""
    if device.type == "cpu" and not emulated:
        return (D, T, B, CPU_RESERVE_SLOTS * H)
    return (D, T, B, RESERVE_SLOTS * H)

_registered = False


def emulating(device: torch.device) -> bool:
    """Whether a fused layer on `device` runs the CUDA kernels under the emulator."""
    return device.type == "cpu" and testing.active() is not None


def unsupported_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused op cannot run on (device, dtype), or None when it can."""
    st = _ext.status()
    if not st.loaded:
        return f"the gru_torch extension is not built: {st.reason}"
    if device.type == "cuda" and not st.cuda:
        return ("the gru_torch extension was built without its CUDA kernels (build with "
                "GRU_TORCH_CUDA=1 and a CUDA toolkit)")
    dtypes = FUSED_DTYPES["cuda" if emulating(device) else device.type] \
        if device.type in FUSED_DTYPES else None
    if dtypes is None:
        return f"the fused kernel is not implemented on {device.type} yet"
    if dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"the fused {device.type} kernel supports {names}, not {str(dtype).replace('torch.', '')}"
    return None


def cell_reason(cell: Cell, dropout_active: bool, masks: str, input_dropout: bool,
                proj: bool, directions: int = 1) -> str | None:
    """Why the fused op cannot compute this cell and these masks, or None when it can."""
    if cell.kind != "gru":
        return f"the fused op computes the GRU cell, not the {cell.describe()} yet"
    if cell.recurrent_activation != "sigmoid":
        return f"the fused op's gates are sigmoids, not {cell.recurrent_activation} yet"
    if dropout_active and input_dropout and masks == "per_gate":
        return "the fused op has no per-gate input dropout masks yet"
    if dropout_active and input_dropout and directions > 1:
        # one input mask shared by the gates multiplies the input before the op, which
        # reads one input for both directions: each direction's own mask needs the op
        return "the fused op has no input dropout masks for two directions yet"
    if dropout_active and masks == "per_gate":
        return "the fused op has one recurrent-dropout mask for every gate, not one per gate yet"
    return None


# Self-check results of the CUDA kernels, per (device, dtype, cell, TF32): None when
# the kernel agreed with the reference, else what mismatched.
_self_checked: dict[tuple, str | None] = {}


def self_check_failure(device: torch.device, dtype: torch.dtype, cell: Cell) -> str | None:
    """On first use per device, dtype and cell, runs the fused CUDA kernel on a small
    problem against the reference (gru_torch.selfcheck); returns what mismatched, or
    None. Other devices (the CPU op, the emulator) are checked by the test suite."""
    if device.type != "cuda":
        return None
    from . import selfcheck

    reset_after = cell.reset_after
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, dtype, reset_after, selfcheck.tf32_enabled())
    if key not in _self_checked and torch.compiler.is_compiling():
        return None  # checked at the first eager call; never traced into a graph
    if key not in _self_checked:
        _self_checked[key] = selfcheck.self_check(gru_layer, torch.device("cuda", index), dtype,
                                                  reset_after)
    return _self_checked[key]


def _setup_context(ctx, inputs, output, emulated=False):
    input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after, need_reserve = inputs
    out, h_n, reserve = output
    if not need_reserve:
        raise RuntimeError("gru_torch: gru_layer ran with need_reserve=False, so it cannot "
                           "be differentiated; call it with need_reserve=True")
    ctx.reset_after = reset_after
    ctx.emulated = emulated
    ctx.has_b_ih = b_ih is not None
    ctx.has_b_hh = b_hh is not None
    ctx.mark_non_differentiable(reserve)
    # Otherwise autograd would fill a zero gradient as large as the reserve.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reserve)
    # The CPU op's backward reads the states from the output. It is not saved like the
    # rest, since autograd would then refuse a backward after the output was modified in
    # place, which nn.GRU allows: an alias (sharing the output's version counter, not its
    # history) tells whether it was, and then the backward recomputes the states.
    ctx.output = out.detach()
    ctx.output_version = ctx.output._version


def _states(ctx, layer_args: tuple, reserve: Tensor) -> tuple[Tensor, Tensor]:
    """The forward's output and reserve as the backward needs them: as kept, or run
    again where the output was modified in place and the op reads its states from it."""
    output = ctx.output
    if output._version == ctx.output_version or ctx.emulated or output.device.type != "cpu":
        return output, reserve  # (the CUDA kernels' reserve keeps the states)
    with torch.no_grad():
        output, _, reserve = torch.ops.gru_torch.gru_layer(*layer_args, ctx.reset_after, True)
    return output, reserve


def _backward(ctx, grad_out, grad_h_n, _grad_reserve):
    input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reserve = ctx.saved_tensors
    output, reserve = _states(ctx, (input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths), reserve)
    if grad_out is None:  # expanded, not allocated: the kernels read any strides
        T, B = input.shape[:2]
        grad_out = input.new_zeros(()).expand(T, B, w_hh.shape[0] * w_hh.shape[2])
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    backward_op = (torch.ops.gru_torch.gru_layer_backward_emulated if ctx.emulated
                   else torch.ops.gru_torch.gru_layer_backward)
    grads = backward_op(
        grad_out, grad_h_n.contiguous(), input, hx, w_ih, w_hh, b_ih, b_hh,
        mask, lengths, ctx.reset_after, reserve, output)
    d_input, d_hx, d_w_ih, d_w_hh, d_b_ih, d_b_hh = grads
    return (d_input, d_hx, d_w_ih, d_w_hh, d_b_ih if ctx.has_b_ih else None,
            d_b_hh if ctx.has_b_hh else None, None, None, None, None)


def _fake_forward(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after, need_reserve,
                  *, emulated: bool):
    T, B, _ = input.shape
    D, G, _ = w_ih.shape
    H = G // 3
    shape = reserve_shape(input.device, emulated, D, T, B, H) if need_reserve else (0,)
    return (input.new_empty((T, B, D * H)), hx.new_empty(hx.shape), input.new_empty(shape))


def _fake_backward(grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths,
                   reset_after, reserve, output):
    D, G, _ = w_ih.shape
    return (input.new_empty(input.shape), hx.new_empty(hx.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_ih.new_empty((D, G)), w_ih.new_empty((D, G)))


def _register() -> None:
    global _registered
    if _registered:
        return
    for suffix, emulated in (("", False), ("_emulated", True)):
        torch.library.register_fake(f"gru_torch::gru_layer{suffix}")(
            functools.partial(_fake_forward, emulated=emulated))
        torch.library.register_fake(f"gru_torch::gru_layer_backward{suffix}")(_fake_backward)
        torch.library.register_autograd(
            f"gru_torch::gru_layer{suffix}", _backward,
            setup_context=functools.partial(_setup_context, emulated=emulated))
        # ... and the backward op's own, so that backward(create_graph=True) differentiates it
        torch.library.register_autograd(f"gru_torch::gru_layer_backward{suffix}",
                                        _backward_autograd.backward,
                                        setup_context=_backward_autograd.setup_context)
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
    op = torch.ops.gru_torch.gru_layer_emulated if emulating(input.device) \
        else torch.ops.gru_torch.gru_layer
    out, h_n, _ = op(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after, need_reserve)
    return out, h_n


def rnn_layer(cell: Cell, input: Tensor, hx: Tensor, cx: Tensor | None, w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None,
              input_mask: Tensor | None, recurrent_mask: Tensor | None,
              lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer of `cell` on the fused op, with gru_torch.reference.rnn_layer_reference's
    arguments and results."""
    per_gate = any(m is not None and m.shape[2] > 1 for m in (input_mask, recurrent_mask))
    why = cell_reason(cell, input_mask is not None or recurrent_mask is not None,
                      "per_gate" if per_gate else "shared", input_mask is not None,
                      w_hr is not None, w_ih.shape[0])
    if why:
        raise RuntimeError(f"gru_torch: the fused op cannot run this layer: {why}")
    if input_mask is not None:  # one direction, one mask for every gate and step
        input = input * input_mask[0, :, 0].unsqueeze(0)
    mask = None if recurrent_mask is None else recurrent_mask.squeeze(2)
    out, h_n = gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, cell.reset_after)
    return out, h_n, None
