"""Denormal numbers on the CPU: flush them to zero for a block of work, on every thread.

float32 values below about 1.2e-38 are denormal, and Intel cores take up to a hundred
times longer for an operation on one. A classifier's loss reads only the final state, so
its gradient decays through the steps into that range: on an Intel Xeon a GRU training
step ran several times slower than with denormals flushed. TensorFlow and XLA flush
them on the CPU by default; PyTorch does not, and `torch.set_flush_denormal` sets only
the calling thread, not the threads its ops run on.

The fused op flushes denormals in float32 by itself, in every thread of a call, and
restores each thread's mode afterwards (csrc/cpu_denormals.h). `flush_denormal()` does
the same for a whole training step: the embedding, the other layers, the optimizer.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from . import _ext

FLUSH_TO_ZERO, DENORMALS_ARE_ZERO = 1, 2
FLUSH = FLUSH_TO_ZERO | DENORMALS_ARE_ZERO


def _ops_loaded() -> bool:
    return _ext.status().loaded and hasattr(torch.ops.gru_torch, "_denormal_modes")


def modes() -> list[int] | None:
    """The denormal mode of the calling thread, then of each of torch's intra-op threads
    (bit 0 flush-to-zero, bit 1 denormals-are-zero); None without the compiled op, which
    reads them."""
    return list(torch.ops.gru_torch._denormal_modes()) if _ops_loaded() else None


def set_modes(values: list[int]) -> None:
    """Sets what `modes()` read: one value per thread as it returned them, or one for all."""
    torch.ops.gru_torch._set_denormal_modes(list(values))


@contextlib.contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[bool]:
    """Within the block, denormal float32 and float64 numbers are flushed to zero (FTZ and
    DAZ) in the calling thread and in torch's intra-op threads, or, with enabled=False,
    kept; each thread's mode is restored afterwards. Yields whether it could be applied
    to every thread: without the compiled op only the calling thread is set, through
    `torch.set_flush_denormal` (False is yielded then, and also where the CPU has no
    such mode)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    before = modes()
    if before is None:
        supported = torch.set_flush_denormal(enabled)
        try:
            yield False
        finally:
            if supported:
                torch.set_flush_denormal(False)
        return
    set_modes([FLUSH if enabled else 0])
    after = modes()
    try:
        yield all(m == (FLUSH if enabled else 0) for m in after)
    finally:
        set_modes(before if len(before) == len(after) else [before[0]])
