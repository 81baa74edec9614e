"""The instruction set the fused CPU op's loops run with.

The loops are compiled twice on x86-64: for AVX2 with FMA, and for AVX-512 (F, BW, VL,
DQ). The op picks the AVX-512 copy where the CPU has it, unless the environment variable
GRU_TORCH_CPU_CAPABILITY says "avx2" (as ATEN_CPU_CAPABILITY does for PyTorch's own
kernels) or `set_cpu_capability` chooses. Both copies give the same bits
(csrc/cpu/capability.h); only the speed differs.
"""
from __future__ import annotations

import torch

from . import _ext


def _loaded() -> bool:
    return _ext.status().loaded and hasattr(torch.ops.gru_torch, "_cpu_capability")


def cpu_capabilities() -> list[str]:
    """What this build can run on this CPU, widest first ("avx512", "avx2" or "default");
    [] without the compiled op."""
    return list(torch.ops.gru_torch._cpu_capabilities()) if _loaded() else []


def cpu_capability() -> str | None:
    """The instruction set the fused CPU op runs with now; None without the compiled op."""
    return str(torch.ops.gru_torch._cpu_capability()) if _loaded() else None


def set_cpu_capability(name: str) -> str:
    """Makes the fused CPU op run its `name` copy ("avx512" or "avx2") from now on, in
    every thread; returns the one it ran before. Raises ValueError for a name this build
    cannot run on this CPU (cpu_capabilities() lists them), RuntimeError without the
    compiled op."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _loaded():
        raise RuntimeError("set_cpu_capability: the compiled op is not loaded "
                           f"({_ext.status().reason or 'not built'})")
    if name not in cpu_capabilities():
        raise ValueError(f"set_cpu_capability: {name!r} is not available; this build on "
                         f"this CPU can run {cpu_capabilities()}")
    return str(torch.ops.gru_torch._set_cpu_capability(name))
