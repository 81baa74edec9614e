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

import contextlib
import functools

import torch
from torch import Tensor

from . import _backward_autograd, _ext, device_plan, testing
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


def gru_op_reason(cell: Cell, dropout_active: bool, masks: str, input_dropout: bool,
                  directions: int = 1) -> str | None:
    """Why the GRU op (gru_layer, CPU and CUDA) cannot compute this cell and these masks,
    or None when it can; the family op (family_layer, CPU) computes the rest."""
    if cell.kind != "gru":
        return f"the fused GRU kernels compute the GRU cell, not the {cell.describe()}"
    if cell.recurrent_activation != "sigmoid":
        return f"the fused GRU kernels' gates are sigmoids, not {cell.recurrent_activation}"
    if dropout_active and masks == "per_gate":
        return "the fused GRU kernels have one dropout mask for every gate, not one per gate"
    if dropout_active and input_dropout and directions > 1:
        # one input mask shared by the gates multiplies the input before the op, which
        # reads one input for both directions: each direction's own mask needs the op
        return "the fused GRU kernels have no input dropout masks for two directions"
    return None


def device_family_reason(cell: Cell, dropout_active: bool, masks: str, input_dropout: bool,
                         directions: int, device: torch.device, dtype: torch.dtype,
                         hidden: int) -> str | None:
    """On a GPU (or the emulated one), why the family op's persistent kernels cannot run
    a layer that only they can run (the GRU op's per-step path covers every other GRU),
    or None: csrc/device/gru_plan.h's choice, known before the call."""
    on_device = device.type == "cuda" or emulating(device)
    if not on_device or gru_op_reason(cell, dropout_active, masks, input_dropout,
                                      directions) is None:
        return None
    emulated = testing.active() if device.type == "cpu" else None
    sm, smem = device_plan.device_limits(device, emulated.gpu if emulated else None)
    why = device_plan.persistent_reason(cell_code(cell), dtype, hidden, sm, smem,
                                        device_plan.allow_tf32())
    return None if why is None else (
        f"the fused {cell.describe()} has the persistent CUDA kernels alone, which cannot "
        f"run this layer ({why})")


def cell_reason(cell: Cell, dropout_active: bool, masks: str, input_dropout: bool,
                proj: bool, directions: int = 1,
                device: torch.device | None = None) -> str | None:
    """Why the fused ops cannot compute this cell and these masks on `device` (None: the
    CPU), or None when they can. On the CPU, the GRU op or the family op computes every
    cell of the family; on a GPU (and under the emulator) the GRU op's kernels, and the
    family op's kernels (every cell and gate function) with one recurrent mask for every
    gate: per-gate masks are the CPU's alone yet. The family op refuses, naming why, a
    layer its persistent kernels cannot run (csrc/device/gru_plan.h)."""
    if proj:
        return "the fused op has no LSTM projections (proj_size) yet"
    why = gru_op_reason(cell, dropout_active, masks, input_dropout, directions)
    if why and device is not None and (device.type not in ("cpu", "meta") or emulating(device)):
        if cell.kind == "rnn" or not (dropout_active and masks == "per_gate"):
            return None  # the family op's kernels
        return (f"the fused {cell.kind.upper()} kernels have one dropout mask for every gate, "
                f"not one per gate, on {'a GPU' if device.type != 'cpu' else 'the emulated GPU'} yet")
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


# The family op's cell and gate codes (csrc/cpu/family.h).
GATE_CODES = {"sigmoid": 0, "hard_sigmoid_keras2": 1, "hard_sigmoid_keras3": 2}
FAMILY_RESERVE_SLOTS = (4, 4, 5, 0, 0)  # per cell code: csrc/cpu/family.h, reserve_slots
# On a device (and emulated) the GRU's kernels are the GRU op's, which keep h_prev after the
# cell's slots (csrc/gru_device_op.h, family_slots).
DEVICE_FAMILY_RESERVE_SLOTS = (5, 5, 5, 0, 0)


def family_reserve_slots(cell: int, device: torch.device, emulated: bool) -> int:
    """Reserve values per (row, unit) a step of the family op for a cell code."""
    on_cpu = device.type == "cpu" and not emulated
    return (FAMILY_RESERVE_SLOTS if on_cpu else DEVICE_FAMILY_RESERVE_SLOTS)[cell]


def cell_code(cell: Cell) -> int:
    if cell.kind == "gru":
        return 0 if cell.reset_after else 1
    if cell.kind == "lstm":
        return 2
    return 3 if cell.activation == "tanh" else 4


def _family_outputs_fake(like, T: int, hx, cx, cell, need_reserve, emulated):
    """The family op's forward results (output, h_n, c_n, reserve) as fake tensors."""
    D, B, H = hx.shape
    slots = family_reserve_slots(cell, like.device, emulated)
    res = (D, T, B, slots * H) if need_reserve else (0,)
    return (like.new_empty((T, B, D * H)), hx.new_empty(hx.shape),
            hx.new_empty(hx.shape) if cx is not None else hx.new_empty((0,)), like.new_empty(res))


def _family_fake(gx, hx, cx, w_hh, b_hn, mask, lengths, cell, gate, need_reserve,
                 emulated=False):
    return _family_outputs_fake(gx, gx.shape[0], hx, cx, cell, need_reserve, emulated)


def _family_x_fake(x, w_ih, bias, hx, cx, w_hh, mask, lengths, cell, gate, need_reserve):
    return _family_outputs_fake(x, x.shape[0], hx, cx, cell, need_reserve, False)


def _family_backward_fake(grad_output, grad_h_n, grad_c_n, gx, hx, cx, w_hh, b_hn, mask,
                          lengths, cell, gate, reserve, output):
    return (gx.new_empty(gx.shape), hx.new_empty(hx.shape),
            hx.new_empty(hx.shape) if cx is not None else hx.new_empty((0,)))


def _family_setup(ctx, inputs, output, emulated=False):
    gx, hx, cx, w_hh, b_hn, mask, lengths, cell, gate, need_reserve = inputs
    out, _, _, reserve = output
    if not need_reserve:
        raise RuntimeError("gru_torch: family_layer ran with need_reserve=False, so it cannot "
                           "be differentiated; call it with need_reserve=True")
    ctx.cell, ctx.gate, ctx.has_cx, ctx.has_b_hn = cell, gate, cx is not None, b_hn is not None
    ctx.emulated = emulated
    ctx.gx_shape = gx.shape
    ctx.mark_non_differentiable(reserve)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(gx, hx, cx, w_hh, b_hn, mask, lengths, reserve)
    # the states are read from the output: kept as an alias, as for gru_layer
    ctx.output = out.detach()
    ctx.output_version = ctx.output._version


def _prev_product(dg: Tensor, out: Tensor, hx: Tensor, lengths: Tensor | None,
                  reverse: bool, mask: Tensor | None, buf: Tensor | None = None) -> Tensor:
    """sum over steps t and rows b of dg[t, b]^T (h_prev[t, b] * mask[b]): dg [T, B, K] a
    direction's gradients of a recurrent product, out [T, B, H] its output, hx [B, H] its
    initial state. h_prev is the output of the step before, or hx at a row's first step;
    past a row's length dg is 0 (and so is the output, read there by the reverse
    direction's last active step, whose h_prev is hx). buf [T, B, H], where given, holds
    the masked states (one buffer for every gate, rather than a fresh tensor each)."""
    K, H = dg.shape[-1], hx.shape[-1]

    def masked(h):
        if mask is None:
            return h
        if buf is None or h.dim() == 2:  # (hx: one step)
            return h * mask
        return torch.mul(h, mask, out=buf[:h.shape[0]])

    if not reverse:
        body, first, h_first = dg[1:], dg[0], hx
        prev = out[:-1]
    else:
        body, prev = dg[:-1], out[1:]
        if lengths is None:
            first = dg[-1]
        else:  # each row's first step is its last active one
            first = dg[(lengths - 1).to(dg.device), torch.arange(dg.shape[1], device=dg.device)]
        h_first = hx
    result = first.t() @ masked(h_first)
    if body.shape[0]:
        result = result.addmm(body.reshape(-1, K).t(), masked(prev).reshape(-1, H))
    return result


def _family_weight_grads(code: int, g_gx: Tensor, reserve: Tensor, output: Tensor, hx: Tensor,
                         mask: Tensor | None, lengths: Tensor | None, want_b_hn: bool):
    """W_hh's (and b_hn's) gradients from the gate gradients g_gx [T, B, D, G]: per gate
    k, the sum over steps and rows of dgh_k^T (h_prev * mask_k), where dgh = g_gx but for
    the GRU's n: scaled by r with reset_after=True; with reset_after=False its operand is
    q = r * h_prev * mask_n."""
    T, B, D, G = g_gx.shape
    H = hx.shape[-1]
    gates = G // H
    g_w, g_b = [], []
    buf = None if mask is None else pooled_empty((T, B, H), hx)
    for d in range(D):
        out_d = output[..., d * H:(d + 1) * H]
        dgh = g_gx[:, :, d]
        m = None if mask is None else mask[d]  # [B, M, H]
        per_gate = m is not None and m.shape[1] > 1

        def product(g, k):
            return _prev_product(g, out_d, hx[d], lengths, d == 1,
                                 None if m is None else m[:, min(k, m.shape[1] - 1)], buf)

        blocks = []
        if code == 0:  # the n gate's product is scaled by r
            dgh_n = dgh[..., 2 * H:] * reserve[d, ..., :H]
            if want_b_hn:
                g_b.append(dgh_n.sum((0, 1)))
        if not per_gate:
            blocks.append(product(dgh if code in (2, 3, 4) else dgh[..., :2 * H], 0))
            if code == 0:
                blocks.append(product(dgh_n, 0))
        else:
            for k in range(2 if code == 1 else gates):
                blocks.append(product(dgh_n if (code == 0 and k == 2)
                                      else dgh[..., k * H:(k + 1) * H], k))
        if code == 1:  # n: the operand q = r * h_prev * mask_n, which the reserve keeps
            q = reserve[d, ..., 3 * H:4 * H]
            blocks.append(dgh[..., 2 * H:].reshape(-1, H).t() @ q.reshape(-1, H))
        g_w.append(torch.cat(blocks) if len(blocks) > 1 else blocks[0])
    return torch.stack(g_w), (torch.stack(g_b) if want_b_hn else None)


def _family_backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_reserve):
    gx, hx, cx, w_hh, b_hn, mask, lengths, reserve = ctx.saved_tensors
    if torch.is_grad_enabled():  # backward(create_graph=True): differentiate the reference
        return _family_reference_vjp(ctx, grad_out, grad_h_n, grad_c_n)
    output = ctx.output
    if output._version != ctx.output_version:  # modified in place: run the forward again
        with torch.no_grad():
            output, _, _, reserve = _family_op(ctx.emulated)(
                gx, hx, cx, w_hh, b_hn, mask, lengths, ctx.cell, ctx.gate, True)
    T, B, D, G = gx.shape
    if grad_out is None:
        grad_out = gx.new_zeros(()).expand(T, B, D * hx.shape[-1])
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    g_gx, g_hx, g_cx = _family_backward_op(ctx.emulated)(
        grad_out, grad_h_n.contiguous(),
        grad_c_n.contiguous() if ctx.has_cx and grad_c_n is not None else None,
        gx.new_empty(()).expand(gx.shape), hx, cx, w_hh, b_hn, mask, lengths, ctx.cell,
        ctx.gate, reserve, output)
    g_w, g_b = (None, None)
    if ctx.needs_input_grad[3] or (ctx.has_b_hn and ctx.needs_input_grad[4]):
        g_w, g_b = _family_weight_grads(ctx.cell, g_gx, reserve, output, hx, mask, lengths,
                                        ctx.has_b_hn)
    return (g_gx, g_hx, g_cx if ctx.has_cx else None, g_w, g_b, None, None, None, None, None)


_CELLS_BY_CODE = (Cell("gru", True), Cell("gru", False), Cell("lstm"), Cell("rnn"),
                  Cell("rnn", activation="relu"))


def _family_cell(code: int, gate: int) -> Cell:
    c = _CELLS_BY_CODE[code]
    if c.kind == "rnn":
        return c
    act = next(name for name, v in GATE_CODES.items() if v == gate)
    return Cell(c.kind, c.reset_after, recurrent_activation=act)


def _family_reference_vjp(ctx, grad_out, grad_h_n, grad_c_n):
    """The backward as differentiable torch ops (the reference loop's), for derivatives
    of every order."""
    from .reference import family_layer_reference

    gx, hx, cx, w_hh, b_hn, mask, lengths, _ = ctx.saved_tensors
    inputs = [gx, hx, cx, w_hh, b_hn]
    with torch.enable_grad():
        leaves = [None if t is None else _backward_autograd._independent(t) for t in inputs]
        out, h_n, c_n = family_layer_reference(_family_cell(ctx.cell, ctx.gate), *leaves, mask,
                                               lengths)
        outs, cots = [], []
        for o, g in ((out, grad_out), (h_n, grad_h_n), (c_n, grad_c_n)):
            if o is not None and g is not None:
                outs.append(o)
                cots.append(g)
        present = [i for i, t in enumerate(leaves) if t is not None and ctx.needs_input_grad[i]]
        grads = torch.autograd.grad(outs, [leaves[i] for i in present], cots, create_graph=True,
                                    allow_unused=True) if outs and present else []
    result: list[Tensor | None] = [None] * 10
    for i, g in zip(present, grads):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return tuple(result)


_family_registered = False


def _register_family() -> None:
    global _family_registered
    if _family_registered:
        return
    for suffix, emulated in (("", False), ("_emulated", True)):
        if emulated and not hasattr(torch.ops.gru_torch, "family_layer_emulated"):
            continue  # (a build without the emulator)
        torch.library.register_fake(f"gru_torch::family_layer{suffix}")(
            functools.partial(_family_fake, emulated=emulated))
        torch.library.register_fake(f"gru_torch::family_layer_backward{suffix}")(
            _family_backward_fake)
        torch.library.register_autograd(f"gru_torch::family_layer{suffix}", _family_backward,
                                        setup_context=functools.partial(_family_setup,
                                                                        emulated=emulated))
    # inference only: no autograd formula (training takes gx, family_layer)
    torch.library.register_fake("gru_torch::family_layer_x")(_family_x_fake)
    _family_registered = True


def _family_op(emulated: bool):
    """The family op: on the device of its tensors, or (emulated) CPU tensors through the
    CUDA kernels under the emulator (csrc/emu_ops.cpp)."""
    return (torch.ops.gru_torch.family_layer_emulated if emulated
            else torch.ops.gru_torch.family_layer)


def _family_backward_op(emulated: bool):
    return (torch.ops.gru_torch.family_layer_backward_emulated if emulated
            else torch.ops.gru_torch.family_layer_backward)


def family_layer(cell: Cell, gx: Tensor, hx: Tensor, cx: Tensor | None, w_hh: Tensor,
                 b_hn: Tensor | None, mask: Tensor | None, lengths: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The family op from the input projection gx [T, B, D, G] (csrc/cpu/family_layer.cpp
    has the shapes). Returns (output, h_n, c_n or None)."""
    if not _ext.status().loaded:
        raise RuntimeError(f"gru_torch: the fused op is unavailable: {_ext.status().reason}. "
                           + _ext.HOW_TO_BUILD)
    _register_family()
    need_reserve = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (gx, hx, cx, w_hh, b_hn))
    out, h_n, c_n, _ = _family_op(emulating(gx.device))(
        gx, hx, cx, w_hh, b_hn, mask, lengths, cell_code(cell),
        GATE_CODES.get(cell.recurrent_activation, 0), need_reserve)
    return out, h_n, (c_n if cx is not None else None)


def _projects_in_loop(cell: Cell, input: Tensor, input_mask: Tensor | None,
                      tensors: tuple) -> bool:
    """Whether a layer's forward runs on family_layer_x, which computes each step's input
    projection in the registers of its recurrent product and never stores gx: the LSTM
    and the RNNs on the CPU, without input masks, where nothing needs a gradient
    (inference). Training keeps gx, whose gradient the weight gradients need anyway."""
    if cell.kind == "gru" or input_mask is not None or input.device.type != "cpu":
        return False
    if (emulating(input.device) or torch.compiler.is_compiling()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    return not (torch.is_grad_enabled()
                and any(t is not None and t.requires_grad for t in tensors))


def family_layer_x(cell: Cell, input: Tensor, w_ih: Tensor, bias: Tensor | None, hx: Tensor,
                   cx: Tensor | None, w_hh: Tensor, mask: Tensor | None,
                   lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The family op's forward from the input (csrc/cpu/family_layer.cpp, family_layer_x),
    for inference: the results of family_layer on gx = input W_ih^T + bias, to rounding."""
    if not _ext.status().loaded:
        raise RuntimeError(f"gru_torch: the fused op is unavailable: {_ext.status().reason}. "
                           + _ext.HOW_TO_BUILD)
    _register_family()
    out, h_n, c_n, _ = torch.ops.gru_torch.family_layer_x(
        input, w_ih, bias, hx, cx, w_hh, mask, lengths, cell_code(cell),
        GATE_CODES.get(cell.recurrent_activation, 0), False)
    return out, h_n, (c_n if cx is not None else None)


def pooled_empty(shape, like: Tensor) -> Tensor:
    """An uninitialized CPU tensor from the op's buffer pool (csrc/cpu_pool.h: huge pages,
    freed buffers reused), where the op is built; elsewhere, and while torch.compile
    traces, a plain torch.empty."""
    if like.device.type != "cpu" or torch.compiler.is_compiling() or not _ext.status().loaded:
        return like.new_empty(shape)
    return torch.ops.gru_torch._pooled_empty(list(shape), like.dtype)


def _projection_reference(gates: int, x: Tensor, w_ih: Tensor, bias: Tensor | None,
                          mask: Tensor | None) -> Tensor:
    """_Projection's result in plain differentiable torch ops."""
    from .reference import _per_gate

    D, G, I = w_ih.shape
    T, B = x.shape[:2]
    if mask is None:
        flat_bias = None if bias is None else bias.reshape(D * G)
        return torch.nn.functional.linear(x, w_ih.reshape(D * G, I), flat_bias).view(T, B, D, G)
    H = G // gates
    return torch.stack([_per_gate(gates, H, x, mask[d].unsqueeze(0), w_ih[d],
                                  None if bias is None else bias[d]) for d in range(D)], dim=2)


class _Projection(torch.autograd.Function):
    """gx [T, B, D, G] = (x * mask[d, :, k]) W_ih[d, gate k]^T + bias[d] for every direction
    d and mask k (one for all gates, or one per gate), written into one pooled buffer,
    and its backward likewise: every training step of a long sequence makes tensors of
    hundreds of MB here, whose fresh pages would fault in on every call."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, mask, gates):
        T, B, I = x.shape
        D, G, _ = w_ih.shape
        M = 1 if mask is None else mask.shape[2]
        W = G // M  # the columns one mask covers
        gx = pooled_empty((T, B, D, G), x)
        gx2 = gx.view(T * B, D * G)
        if mask is None:
            x2, w2 = x.reshape(T * B, I), w_ih.reshape(D * G, I)
            if bias is None:
                torch.mm(x2, w2.t(), out=gx2)
            else:
                torch.addmm(bias.reshape(D * G), x2, w2.t(), out=gx2)
        else:
            buf = pooled_empty((T, B, I), x)
            for d in range(D):
                for k in range(M):
                    cols = slice(d * G + k * W, d * G + (k + 1) * W)
                    torch.mul(x, mask[d, :, k], out=buf)
                    w = w_ih[d, k * W:(k + 1) * W].t()
                    if bias is None:
                        torch.mm(buf.view(T * B, I), w, out=gx2[:, cols])
                    else:
                        torch.addmm(bias[d, k * W:(k + 1) * W], buf.view(T * B, I), w,
                                    out=gx2[:, cols])
        ctx.save_for_backward(x, w_ih, bias, mask)
        ctx.gates = gates
        return gx

    @staticmethod
    def backward(ctx, g):
        x, w_ih, bias, mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain expression
            with torch.enable_grad():
                inputs = [None if t is None else _backward_autograd._independent(t)
                          for t in (x, w_ih, bias)]
                gx = _projection_reference(ctx.gates, *inputs, mask)
                want = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
                grads = torch.autograd.grad(gx, [inputs[i] for i in want], g, create_graph=True)
            result = [None] * 5
            for i, v in zip(want, grads):
                result[i] = v
            return tuple(result)
        T, B, I = x.shape
        D, G, _ = w_ih.shape
        M = 1 if mask is None else mask.shape[2]
        W = G // M
        g2 = g.reshape(T * B, D * G)
        dx = dw = db = None
        if mask is None:
            w2 = w_ih.reshape(D * G, I)
            if ctx.needs_input_grad[0]:
                dx = pooled_empty((T, B, I), x)
                torch.mm(g2, w2, out=dx.view(T * B, I))
            if ctx.needs_input_grad[1]:
                dw = (g2.t() @ x.reshape(T * B, I)).view(D, G, I)
        else:
            buf = pooled_empty((T, B, I), x)
            if ctx.needs_input_grad[0]:
                dx = pooled_empty((T, B, I), x).zero_()
            if ctx.needs_input_grad[1]:
                dw = torch.empty_like(w_ih)
            for d in range(D):
                for k in range(M):
                    gk = g2[:, d * G + k * W:d * G + (k + 1) * W]
                    m = mask[d, :, k]
                    if dx is not None:
                        torch.mm(gk, w_ih[d, k * W:(k + 1) * W], out=buf.view(T * B, I))
                        dx.addcmul_(buf, m)
                    if dw is not None:
                        torch.mul(x, m, out=buf)
                        torch.mm(gk.t(), buf.view(T * B, I), out=dw[d, k * W:(k + 1) * W])
        if bias is not None and ctx.needs_input_grad[2]:
            db = g2.sum(0).view(D, G)
        return dx, dw, db, None, None


def _input_projection(cell: Cell, input: Tensor, w_ih: Tensor, bias: Tensor | None,
                      input_mask: Tensor | None) -> Tensor:
    """gx [T, B, D, G] = (input * mask) W_ih^T + bias per direction: without masks one
    GEMM for both directions (W_ih of both as one [D*G, I] matrix; its backward one GEMM
    for the input's gradient and one for W_ih's), with masks one per direction and mask."""
    if (input.device.type != "cpu" or emulating(input.device) or torch.compiler.is_compiling()
            or torch._C._functorch.peek_interpreter_stack() is not None):  # (vmap)
        return _projection_reference(cell.gates, input, w_ih, bias, input_mask)
    return _Projection.apply(input, w_ih, bias, input_mask, cell.gates)


def rnn_layer(cell: Cell, input: Tensor, hx: Tensor, cx: Tensor | None, w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None,
              input_mask: Tensor | None, recurrent_mask: Tensor | None,
              lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer of `cell` on the fused ops, with gru_torch.reference.rnn_layer_reference's
    arguments and results: the GRU op where it computes the cell and masks, else (on the
    CPU) the family op."""
    per_gate = any(m is not None and m.shape[2] > 1 for m in (input_mask, recurrent_mask))
    masks = "per_gate" if per_gate else "shared"
    dropout = input_mask is not None or recurrent_mask is not None
    D = w_ih.shape[0]
    why = cell_reason(cell, dropout, masks, input_mask is not None, w_hr is not None, D,
                      input.device)
    if why:
        raise RuntimeError(f"gru_torch: the fused op cannot run this layer: {why}")
    if gru_op_reason(cell, dropout, masks, input_mask is not None, D) is None:
        if input_mask is not None:  # one direction, one mask for every gate and step
            input = input * input_mask[0, :, 0].unsqueeze(0)
        mask = None if recurrent_mask is None else recurrent_mask.squeeze(2)
        out, h_n = gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, cell.reset_after)
        return out, h_n, None
    # The family op: b_hh joins the input projection's bias, but for the GRU's b_hn
    # (scaled by r with reset_after=True).
    H = w_hh.shape[-1]
    b_hn = None
    bias = b_ih
    if b_hh is not None:
        if cell.kind == "gru" and cell.reset_after:
            b_hn = b_hh[:, 2 * H:]
            b_hh = torch.cat([b_hh[:, :2 * H], torch.zeros_like(b_hn)], 1)
        bias = b_hh if bias is None else bias + b_hh
    if recurrent_mask is not None and recurrent_mask.dim() == 3:
        recurrent_mask = recurrent_mask.unsqueeze(2)
    if _projects_in_loop(cell, input, input_mask, (input, hx, cx, w_ih, w_hh, bias)):
        return family_layer_x(cell, input, w_ih, bias, hx, cx, w_hh, recurrent_mask, lengths)
    # in the layer's dtype, as the op computes it (CPU autocast would make it bfloat16)
    with torch.autocast("cpu", enabled=False) if input.device.type == "cpu" else contextlib.nullcontext():
        gx = _input_projection(cell, input, w_ih, bias, input_mask)
    return family_layer(cell, gx, hx, cx, w_hh, b_hn, recurrent_mask, lengths)
