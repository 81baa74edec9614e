"""Which layers the persistent CUDA kernels can run, known before the call.

csrc/device/gru_plan.h (`choose`) decides it in C++ for every call, and the family op
refuses a layer its kernels cannot run, naming why. The LSTM and the RNN (and the GRU on
the family op: hard sigmoids, two directions' input masks) have no per-step path on a
device, so `backend="auto"` must know beforehand, to fall back to cuDNN or the reference
loop rather than fail. This is the same rule in Python; tests/test_cuda_family.py checks
that the two agree on every cell, dtype and size, on both emulated GPUs.
"""
from __future__ import annotations

import functools

import torch

CELL_GATES = (3, 3, 4, 1, 1)  # per family cell code: GRU (after, before), LSTM, RNN tanh, relu
GRU_BEFORE = 1
TILE_ROWS = 16
PADDED_SIZES = (32, 64, 128, 256)
# The opt-in shared memory per block and compute capability of the GPUs the emulator
# stands in for (csrc/emu/emulator.cpp, gpu_props).
EMULATED_GPUS = {"a100": (80, 166912), "h100": (90, 232448)}


def _shape(tf32: bool, hp: int) -> tuple[int, int, int, int]:
    """(warps, register k-tiles forward, backward, cluster): gru_plan.h's shape()."""
    if tf32:
        return {32: (4, 4, 12, 1), 64: (4, 8, 24, 1), 128: (8, 10, 28, 1)}[hp]
    return {32: (4, 2, 6, 1), 64: (4, 4, 12, 1), 128: (8, 8, 24, 1), 256: (8, 10, 28, 2)}[hp]


def _gru_w_regs(tf32: bool, hp: int, backward: bool) -> int:
    warps, fwd, bwd, cluster = _shape(tf32, hp)
    nj = hp // cluster // warps // 8
    return bwd * nj * 2 if backward else fwd * 3 * nj * 2


def _reg_tiles(tf32: bool, hp: int, gates: int, backward: bool) -> int:
    warps, _, _, cluster = _shape(tf32, hp)
    k_tiles = (gates * hp if backward else hp) // (8 if tf32 else 16)
    budget = max(_gru_w_regs(tf32, hp, backward), _gru_w_regs(tf32, 128, backward))
    if backward and gates == 4 and tf32:
        budget -= 16  # (gru_plan.h: the tf32 LSTM's backward keeps 16 registers more)
    per_tile = 2 * (1 if backward else gates) * (hp // cluster // warps // 8)
    return min(budget // per_tile, k_tiles)


def persistent_smem(tf32: bool, hp: int, cell: int, backward: bool) -> int:
    """Dynamic shared memory of a persistent kernel: gru_plan.h's persistent_smem()."""
    warps, _, _, cluster = _shape(tf32, hp)
    gates = CELL_GATES[cell]
    k = gates * hp if backward else hp
    kt = k // (8 if tf32 else 16)
    cols = (1 if backward else gates) * (hp // cluster // warps // 8)
    reg = _reg_tiles(tf32, hp, gates, backward)
    tiles = 1 if (backward and cell == GRU_BEFORE) else 2
    tile = TILE_ROWS * (k + (4 if tf32 else 8)) * (4 if tf32 else 2)
    return tiles * tile + warps * (kt - reg) * cols * 32 * 8


def allow_tf32() -> bool:
    """cuDNN's TF32 switch for RNNs, which decides float32's operands: the op's own
    reading of it, where the build has it."""
    try:
        return bool(torch.ops.gru_torch._tf32_for_rnn())
    except (AttributeError, RuntimeError):
        return bool(torch.backends.cudnn.allow_tf32)


@functools.lru_cache(maxsize=None)
def device_limits(device: torch.device, gpu: str | None = None) -> tuple[int, int]:
    """(compute capability x 10, opt-in shared memory per block) of a CUDA device, or of
    the emulated GPU `gpu`; asked once per device (a module asks on every call)."""
    if gpu is not None:
        return EMULATED_GPUS[gpu]
    props = torch.cuda.get_device_properties(device)
    return props.major * 10 + props.minor, int(props.shared_memory_per_block_optin)


def persistent_reason(cell: int, dtype: torch.dtype, hidden: int, sm: int, smem_optin: int,
                      tf32_allowed: bool) -> str | None:
    """Why the persistent kernels cannot run a layer of this cell (a family cell code),
    dtype and hidden size on a GPU with these limits, or None when they can."""
    if dtype == torch.float64:
        return "float64 has no tensor-core path"
    if dtype == torch.float32 and not tf32_allowed:
        return "float32 with TF32 off needs exact fp32 FMA"
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"no persistent kernel for {dtype}"
    if hidden % 2:
        return "odd H: the persistent kernels move units in pairs"
    tf32 = dtype == torch.float32
    for hp in PADDED_SIZES:
        if hidden > hp:
            continue
        if hp > (128 if tf32 else 256) or (_shape(tf32, hp)[3] > 1 and sm < 90):
            break
        need = max(persistent_smem(tf32, hp, cell, False), persistent_smem(tf32, hp, cell, True))
        if need > smem_optin:
            return (f"H = {hidden} pads to {hp}, whose kernels need {need} bytes of shared "
                    f"memory, more than this GPU's {smem_optin}")
        return None
    top = 128 if (tf32 or sm < 90) else 256
    return f"H = {hidden} exceeds the persistent kernels' {top} here"
