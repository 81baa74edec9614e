"""Finds the compiled ops: the prebuilt gru_torch._C, else a JIT build with ninja, else None.

Importing gru_torch never fails for a missing build: `status()` says what was found and
why, and asking for backend="fused" where it is missing raises an error built from it.

Environment switches:
  GRU_TORCH_DISABLE_EXT=1  behave as if no build exists (tests of the fallback chain)
  GRU_TORCH_NO_JIT=1       do not try the JIT build when the prebuilt one is missing
  GRU_TORCH_JIT=1          skip the prebuilt one and JIT-build from csrc/ (C++ edits)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExtStatus:
    loaded: bool
    how: str          # "prebuilt", "jit" or "none"
    cuda: bool        # whether the CUDA sources were compiled in
    reason: str       # why it is missing, when it is
    # per device ("cpu", "cuda"): whether a fused kernel is registered for it
    devices: dict[str, bool] = field(default_factory=lambda: {"cpu": False, "cuda": False})

    def __str__(self) -> str:
        if not self.loaded:
            return f"gru_torch extension not loaded: {self.reason}"
        kernels = ", ".join(f"{d} {'yes' if ok else 'no'}" for d, ok in self.devices.items())
        note = "" if self.devices.get("cuda") else (
            " (the CUDA sources are not compiled in: the build found no GPU or had "
            "GRU_TORCH_CUDA=0; GRU_TORCH_CUDA=1 compiles them)")
        return f"gru_torch extension ({self.how}); fused kernel per device: {kernels}{note}"


HOW_TO_BUILD = (
    "build it with `pip install --no-build-isolation .` (or `make build`) from a source "
    "checkout, with a C++ compiler, ninja and, for CUDA, a CUDA toolkit (CUDA_HOME)"
)


def _ops_registered() -> bool:
    import torch

    return hasattr(torch.ops.gru_torch, "gru_layer")


def _has_kernel(dispatch_key: str) -> bool:
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("gru_torch::gru_layer", dispatch_key)


def _loaded(how: str) -> ExtStatus:
    devices = {"cpu": _has_kernel("CPU"), "cuda": _has_kernel("CUDA")}
    return ExtStatus(True, how, devices["cuda"], "", devices)


def _jit_build() -> None:
    from . import _build

    _build.default_cuda_home()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, load

    src = _build.csrc_dir()
    if src is None:
        raise FileNotFoundError("the C++ sources (csrc/) are not shipped with this install")
    sources = [str(src / s) for s in _build.CPU_SOURCES]
    cuda = torch.cuda.is_available() and CUDA_HOME is not None
    extra_include = [str(src)]
    if cuda:
        sources += [str(src / s) for s in _build.CUDA_SOURCES]
        extra_include += _build.cuda_include_dirs()
    sources += [str(src / s) for s in _build.AVX512_SOURCES]  # last: see _build.AVX512_SOURCES
    load(
        name="gru_torch_C",
        sources=sources,
        extra_cflags=_build.cxx_flags(),
        extra_cuda_cflags=["-O3", "-lineinfo"],
        extra_include_paths=extra_include,
        is_python_module=False,
        verbose=False,
    )


_status: ExtStatus | None = None


def status() -> ExtStatus:
    """Loads the ops once; later calls return what the first found (a plain global read,
    which torch.compile traces as a constant)."""
    global _status
    if _status is None:
        _status = _load()
    return _status


def _load() -> ExtStatus:
    if os.environ.get("GRU_TORCH_DISABLE_EXT") == "1":
        return ExtStatus(False, "none", False, "disabled by GRU_TORCH_DISABLE_EXT=1")
    if os.environ.get("GRU_TORCH_JIT") == "1":
        prebuilt_error = "prebuilt gru_torch._C skipped (GRU_TORCH_JIT=1)"
    else:
        try:
            from . import _C  # noqa: F401  (loading it registers torch.ops.gru_torch.*)

            return _loaded("prebuilt")
        except ImportError as e:
            prebuilt_error = f"no prebuilt gru_torch._C ({e})"
    if os.environ.get("GRU_TORCH_NO_JIT") == "1":
        return ExtStatus(False, "none", False, f"{prebuilt_error}; JIT build disabled by GRU_TORCH_NO_JIT=1")
    try:
        _jit_build()
    except Exception as e:  # a failed build must not break the import; it is reported
        reason = f"{prebuilt_error}; JIT build failed: {type(e).__name__}: {e}"
        warnings.warn(f"gru_torch: fused op unavailable, falling back ({reason})", stacklevel=2)
        return ExtStatus(False, "none", False, reason)
    if not _ops_registered():
        return ExtStatus(False, "none", False, "the JIT build did not register gru_torch ops")
    return _loaded("jit")
