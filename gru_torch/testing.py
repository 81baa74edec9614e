"""Running gru_torch's CUDA kernels without a GPU.

Inside ``emulate_cuda()``, ``gru_torch.GRU(..., backend="fused")`` on CPU tensors runs
the CUDA kernels (forward and backward), compiled for the host, through the project's
CUDA emulator: each CUDA thread is a fiber, shared memory is checked for races, bounds
and reads of never-written words, warp collectives for bad masks, barriers for
divergence and deadlock, and every launch against the limits of the GPU named
(``"h100"`` or ``"a100"``). Outside it nothing changes.

A bug the emulator finds is raised as an ``EmulatorError`` subclass naming the block,
the thread and, for memory errors, the address::

    with gru_torch.testing.emulate_cuda(gpu="a100", shuffle_seed=1):
        out, h = gru(x)                     # the CUDA kernels, on the CPU
"""
from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass

import torch

from . import _ext

GPUS = ("h100", "a100")


class EmulatorError(RuntimeError):
    """A bug the CUDA emulator found (or a launch the GPU would refuse)."""
    kind = "emulator"


class DeadlockError(EmulatorError):
    kind = "deadlock"


class BarrierError(EmulatorError):
    kind = "barrier"


class WarpSyncError(EmulatorError):
    kind = "warp"


class RaceError(EmulatorError):
    kind = "race"


class SharedMemoryBoundsError(EmulatorError):
    kind = "shared-bounds"


class GlobalMemoryBoundsError(EmulatorError):
    kind = "global-bounds"


class UninitializedReadError(EmulatorError):
    kind = "uninit"


class MisalignedAccessError(EmulatorError):
    kind = "misaligned"


class LaunchError(EmulatorError):
    kind = "launch"


class KernelError(EmulatorError):
    kind = "kernel"


_BY_KIND = {cls.kind: cls for cls in (DeadlockError, BarrierError, WarpSyncError, RaceError,
                                      SharedMemoryBoundsError, GlobalMemoryBoundsError,
                                      UninitializedReadError, MisalignedAccessError,
                                      LaunchError, KernelError)}
_MESSAGE = re.compile(r"cuda_emu\[([a-z-]+)\]: (.*)", re.S)


def translate(error: BaseException) -> BaseException:
    """The EmulatorError subclass for an error raised through a torch op by the
    emulator, or `error` itself when the emulator did not raise it."""
    m = _MESSAGE.search(str(error))
    if not m or isinstance(error, EmulatorError):
        return error
    return _BY_KIND.get(m.group(1), EmulatorError)(m.group(0).splitlines()[0])


@contextlib.contextmanager
def raising_emulator_errors():
    """Re-raises an emulator failure inside the block as its EmulatorError subclass."""
    try:
        yield
    except RuntimeError as e:
        new = translate(e)
        if new is e:
            raise
        raise new from None


@dataclass(frozen=True)
class EmulatorSettings:
    gpu: str
    race_check: bool
    init_check: bool
    shuffle_seed: int | None


_lock = threading.Lock()
_stack: list[EmulatorSettings] = []


def active() -> EmulatorSettings | None:
    """The settings of the innermost emulate_cuda() in force, or None."""
    return _stack[-1] if _stack else None


def _apply(settings: EmulatorSettings | None) -> None:
    s = settings or EmulatorSettings("h100", True, True, None)
    torch.ops.gru_torch._emu_configure(settings is not None, s.gpu, s.race_check, s.init_check,
                                       -1 if s.shuffle_seed is None else s.shuffle_seed)


def _require_extension() -> None:
    st = _ext.status()
    if not st.loaded:
        raise RuntimeError(f"gru_torch: the CUDA emulator is part of the extension, which is not "
                           f"built: {st.reason}. {_ext.HOW_TO_BUILD}")
    if not hasattr(torch.ops.gru_torch, "_emu_configure"):
        raise RuntimeError("gru_torch: this build has no CUDA emulator (a JIT build leaves it "
                           "out); " + _ext.HOW_TO_BUILD)


@contextlib.contextmanager
def emulate_cuda(gpu: str = "h100", race_check: bool = True, shuffle_seed: int | None = None,
                 init_check: bool = True):
    """Runs gru_torch's CUDA kernels on the CPU for fused GRUs on CPU tensors.

    gpu: "h100" (sm_90) or "a100" (sm_80): whose launch limits are checked.
    race_check: report shared-memory races (and out-of-bounds accesses, always on).
    shuffle_seed: resume threads in a random order from this seed (and yield at random
        shared-memory accesses), so that an order-dependent result differs between seeds.
    init_check: report reads of shared memory that nothing wrote in the launch.
    """
    if gpu not in GPUS:
        raise ValueError(f"gpu must be one of {GPUS}, got {gpu!r}")
    if shuffle_seed is not None and (isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)
                                     or shuffle_seed < 0):
        raise ValueError(f"shuffle_seed must be None or a non-negative int, got {shuffle_seed!r}")
    _require_extension()
    settings = EmulatorSettings(gpu, bool(race_check), bool(init_check), shuffle_seed)
    with _lock:
        _stack.append(settings)
        _apply(settings)
    try:
        with raising_emulator_errors():
            yield settings
    finally:
        with _lock:
            _stack.remove(settings)
            _apply(active())


def last_launch_stats() -> dict[str, float]:
    """What the emulator's last launch did: seconds, fiber switches, barriers, warp
    collectives and shared-memory accesses."""
    _require_extension()
    keys = ("seconds", "switches", "barriers", "warp_ops", "smem_accesses")
    return dict(zip(keys, torch.ops.gru_torch._emu_last_stats()))


def run_device_selftest(name: str, buffers: list[torch.Tensor], ints: list[int]) -> None:
    """Runs one of the device self-test kernels (csrc/device/selftest_kernels.cuh):
    through the emulator on CPU tensors (with the settings of the enclosing
    emulate_cuda(), or its defaults), on the GPU on CUDA tensors."""
    _require_extension()
    emulated = buffers and buffers[0].device.type == "cpu"
    context = emulate_cuda() if emulated and active() is None else contextlib.nullcontext()
    with context, raising_emulator_errors():
        torch.ops.gru_torch._device_selftest(name, buffers, [int(i) for i in ints])
