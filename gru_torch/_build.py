"""How the extension is compiled: one place for setup.py and the JIT build.

Imports nothing from gru_torch, so setup.py can load it before the package exists.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CSRC_DIRS = (Path(__file__).resolve().parent / "csrc", Path(__file__).resolve().parent.parent / "csrc")
CPU_SOURCES = ("ops.cpp", "gru_cpu.cpp", "cpu_forward.cpp", "cpu_backward.cpp", "cpu_pool.cpp")
CUDA_SOURCES = ("gru_cuda.cu",)


def csrc_dir() -> Path | None:
    """The folder holding the C++/CUDA sources, or None where they are not shipped."""
    for d in CSRC_DIRS:
        if all((d / s).is_file() for s in CPU_SOURCES + CUDA_SOURCES):
            return d
    return None


def _cpu_has(*flags: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return all(f in have for f in flags)
    return False


def _torch_uses_openmp() -> bool:
    import torch

    return torch.backends.openmp.is_available()


def cxx_flags() -> list[str]:
    flags = ["-O3"]
    if _torch_uses_openmp() and sys.platform.startswith("linux"):
        # at::parallel_for is a header template: without -fopenmp it runs serially in our
        # code. Compiled only (not linked), its OpenMP calls bind to the runtime torch loaded.
        flags += ["-fopenmp", "-Wno-unknown-pragmas"]
    arch = os.environ.get("GRU_TORCH_CPU_ARCH", "native")
    if arch not in ("native", "generic"):
        raise ValueError(f"GRU_TORCH_CPU_ARCH must be 'native' or 'generic', got {arch!r}")
    if arch == "native" and _cpu_has("avx2", "fma"):
        # at::vec picks its AVX2 implementation (exp/tanh through Sleef in libtorch).
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"]
    return flags


def cuda_include_dirs() -> list[str]:
    """Library headers (cuSPARSE, ...) that torch's CUDA headers include, from the wheel."""
    import torch

    base = Path(torch.__file__).resolve().parent.parent / "nvidia"
    return [str(p) for p in sorted(base.glob("cu*/include")) if p.is_dir()]


def default_cuda_home() -> None:
    """Points CUDA_HOME at the standard toolkit folder when it is unset. torch otherwise
    derives it from `which nvcc`, which is wrong where nvcc is linked into /usr/local/bin."""
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        std = Path("/usr/local/cuda")
        if (std / "bin" / "nvcc").exists():
            os.environ["CUDA_HOME"] = str(std)


def want_cuda(setting: str | None) -> bool:
    """Whether to compile the .cu files. setting: None (when possible), "0" or "1"."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if setting == "0":
        return False
    if setting == "1" and not possible:
        raise RuntimeError(
            "GRU_TORCH_CUDA=1 but the CUDA build is impossible: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}"
        )
    return possible


def extension(name: str, cuda_setting: str | None):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    src = csrc_dir()
    if src is None:
        raise FileNotFoundError(f"gru_torch: C++ sources not found in {CSRC_DIRS}")
    cpu = [os.path.relpath(src / s) for s in CPU_SOURCES]
    if want_cuda(cuda_setting):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        return CUDAExtension(
            name,
            cpu + [os.path.relpath(src / s) for s in CUDA_SOURCES],
            include_dirs=[str(src)] + cuda_include_dirs(),
            extra_compile_args={"cxx": cxx_flags(), "nvcc": ["-O3", "-lineinfo"]},
        )
    return CppExtension(name, cpu, include_dirs=[str(src)],
                        extra_compile_args={"cxx": cxx_flags()})
