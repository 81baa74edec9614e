"""Checking the fused kernel against the reference: the tolerance rule, and the
self-check the CUDA backend runs on first use per device, dtype and cell.

The rule, as flash-attention's tests use it: a result in a low precision is compared
with the float64 reference, and may stray from it by at most a few times what the
reference itself strays when it runs in that precision, plus a small floor. TF32
operands have float16's 10-bit mantissa, so float32 with TF32 is held to the
float16 reference's error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import gru_layer_reference

GRAD_NAMES = ("input", "hx", "w_ih", "w_hh", "b_ih", "b_hh")
# Unit roundoff of each operand precision (tf32: 10 mantissa bits, as float16).
UNIT = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -11,
        "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
PEER = {"tf32": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16}


def tf32_enabled() -> bool:
    """Whether the fused float32 kernels use TF32 operands now: cuDNN's switch for
    RNNs (torch.backends.cudnn.allow_tf32, or its rnn fp32_precision)."""
    return bool(torch.ops.gru_torch._tf32_for_rnn())


def precision_of(dtype: torch.dtype) -> str:
    """The operand precision the fused kernels compute `dtype` in."""
    if dtype == torch.float32:
        return "tf32" if tf32_enabled() else "float32"
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Problem:
    T: int = 7
    B: int = 18
    I: int = 5
    H: int = 20
    D: int = 2
    reset_after: bool = True
    mask: bool = True
    lengths: bool = True
    bias: bool = True
    seed: int = 0


def make_args(p: Problem, dtype: torch.dtype, device) -> tuple:
    """Fresh random layer arguments (never zeros) at nn.GRU's weight scale; lengths
    include T and 1."""
    g = torch.Generator().manual_seed(p.seed)
    k = p.H ** -0.5

    def uniform(*shape, scale=k):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale)

    x = torch.randn(p.T, p.B, p.I, generator=g, dtype=torch.float64)
    hx = torch.randn(p.D, p.B, p.H, generator=g, dtype=torch.float64) * 0.5
    w_ih, w_hh = uniform(p.D, 3 * p.H, p.I), uniform(p.D, 3 * p.H, p.H)
    b_ih = uniform(p.D, 3 * p.H) if p.bias else None
    b_hh = uniform(p.D, 3 * p.H) if p.bias and p.reset_after else None
    mask = ((torch.rand(p.D, p.B, p.H, generator=g) > 0.25).double() / 0.75) if p.mask else None
    lengths = None
    if p.lengths:
        lengths = torch.randint(1, p.T + 1, (p.B,), generator=g)
        lengths[0] = p.T
        if p.B > 1:
            lengths[1] = 1
    tensors = [x, hx, w_ih, w_hh, b_ih, b_hh, mask]
    moved = [None if t is None else t.to(device=device, dtype=dtype) for t in tensors]
    return (*moved, None if lengths is None else lengths.to(device), p.reset_after)


def output_gradients(p: Problem, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(p.T, p.B, p.D * p.H, generator=g, dtype=torch.float64),
            torch.randn(p.D, p.B, p.H, generator=g, dtype=torch.float64))


def results(layer_fn, args: tuple, go: Tensor, gh: Tensor) -> dict[str, Tensor]:
    """Output, h_n and the gradient of every floating argument, as float64 on the CPU."""
    args = tuple(a.detach().requires_grad_() if isinstance(a, Tensor) and a.is_floating_point()
                 and i < 6 else a for i, a in enumerate(args))
    out, h_n = layer_fn(*args)
    leaves = {name: a for name, a in zip(GRAD_NAMES, args[:6]) if a is not None}
    loss = (out * go.to(out)).sum() + (h_n * gh.to(h_n)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    found = {"output": out, "h_n": h_n}
    found.update({f"d_{name}": gr for name, gr in zip(leaves, grads)})
    return {k: v.detach().to("cpu", torch.float64) for k, v in found.items()}


def _cast(args: tuple, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a
                 for a in args)


def mismatches(found: dict[str, Tensor], args: tuple, go: Tensor, gh: Tensor,
               precision: str, factor: float = 4.0) -> list[str]:
    """What strays too far from the reference, described; [] when all agree. `args`
    are the ones the fused run got; the references run on their CPU copies."""
    cpu_args = tuple(a.cpu() if isinstance(a, Tensor) else a for a in args)
    exact = results(gru_layer_reference, _cast(cpu_args, torch.float64), go, gh)
    peer = None
    if precision in PEER:
        peer = results(gru_layer_reference, _cast(cpu_args, PEER[precision]), go, gh)
    return compare(found, exact, peer, precision, factor)


def compare(found: dict[str, Tensor], exact: dict[str, Tensor], peer: dict[str, Tensor] | None,
            precision: str, factor: float = 4.0) -> list[str]:
    """The rule itself: `found` against the float64 reference's `exact`, allowed
    `factor` times the reference's own error in the operand precision (`peer`, the
    reference run in that precision; None for float32 and float64)."""
    # A floor of a couple of roundings for low precision (where the peer's error is the
    # measure); fp32 and fp64 sum over T steps and H units, so theirs is wider.
    floor = UNIT[precision] * (2 if peer is not None else 1024)
    problems = []
    for name, want in exact.items():
        got = found[name]
        if got.shape != want.shape:
            problems.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
            continue
        err = (got - want).abs().max().item()
        allowed = floor * (1.0 + want.abs().max().item())
        if peer is not None:
            allowed += factor * (peer[name] - want).abs().max().item()
        if not err <= allowed:  # also catches NaN
            problems.append(f"{name}: max error {err:.3g} > allowed {allowed:.3g}")
    return problems


def self_check(layer_fn, device: torch.device, dtype: torch.dtype, reset_after: bool) -> str | None:
    """Runs layer_fn (the fused layer) on a small problem on `device` and compares the
    output, h_n and every gradient with the reference. Returns what mismatched, or
    None when everything agrees."""
    p = Problem(reset_after=reset_after)
    args = make_args(p, dtype, device)
    go, gh = output_gradients(p)
    try:
        found = results(layer_fn, args, go, gh)
    except RuntimeError as e:
        return f"the kernel failed: {str(e).splitlines()[0]}"
    problems = mismatches(found, args, go, gh, precision_of(dtype))
    return "; ".join(problems) if problems else None
