"""How the extension is compiled: one place for setup.py and the JIT build.

Imports nothing from gru_torch, so setup.py can load it before the package exists.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CSRC_DIRS = (Path(__file__).resolve().parent / "csrc", Path(__file__).resolve().parent.parent / "csrc")
# The kernels (kernels/*.cu) are compiled twice: by nvcc for the GPU (CUDA_SOURCES), and
# by the host compiler through emu/*.cpp for the CUDA emulator (EMULATOR_SOURCES), which
# setup.py builds into every extension and the JIT fallback leaves out (it is for
# development, and it is most of the C++ to compile). Neither includes a torch header;
# gru_cuda.cpp and emu_ops.cpp are the torch glue.
KERNELS = ("selftest", "gru_persistent_f32", "gru_persistent_bf16", "gru_persistent_f16", "gru_step")
CPU_SOURCES = ("ops.cpp", "gru_cpu.cpp", "cpu_forward.cpp", "cpu_backward.cpp", "cpu_pool.cpp",
               "cpu/capability.cpp", "cpu/family_layer.cpp", "cpu/family_loop.cpp")
# The CPU loops once more for AVX-512 (csrc/cpu/capability.h), chosen at run time. Listed
# last of all sources: the linker keeps the first copy of an inline function it meets,
# and that must be the baseline's (csrc/cpu/avx512.h). Their names differ from the
# baseline sources': torch's JIT build names each object after its source's file name.
AVX512_SOURCES = ("cpu/avx512/cpu_forward_avx512.cpp", "cpu/avx512/cpu_backward_avx512.cpp",
                  "cpu/avx512/family_loop_avx512.cpp")
EMULATOR_SOURCES = ("emu/emulator.cpp", "emu/launch_check.cpp", "emu_ops.cpp") + tuple(
    f"emu/{k}.cpp" for k in KERNELS)
CUDA_SOURCES = ("gru_cuda.cpp",) + tuple(f"kernels/{k}.cu" for k in KERNELS)


def csrc_dir() -> Path | None:
    """The folder holding the C++/CUDA sources, or None where they are not shipped."""
    for d in CSRC_DIRS:
        if all((d / s).is_file()
               for s in CPU_SOURCES + EMULATOR_SOURCES + CUDA_SOURCES + AVX512_SOURCES):
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
    debug = os.environ.get("GRU_TORCH_DEBUG_INFO", "0")
    if debug not in ("0", "1"):
        raise ValueError(f"GRU_TORCH_DEBUG_INFO must be '0' or '1', got {debug!r}")
    if debug == "0":
        # Python's CFLAGS carry -g: debug info doubled the compile time of a source with
        # torch's headers (gru_cpu.cpp compiled alone with the build's flags on the 2-core
        # development machine: 44 s with -g, 20 s with -g0). GRU_TORCH_DEBUG_INFO=1 keeps it.
        flags.append("-g0")
    if _torch_uses_openmp() and sys.platform.startswith("linux"):
        # at::parallel_for is a header template: without -fopenmp it runs serially in our
        # code. Compiled only (not linked), its OpenMP calls bind to the runtime torch loaded.
        flags += ["-fopenmp", "-Wno-unknown-pragmas"]
    arch = os.environ.get("GRU_TORCH_CPU_ARCH", "native")
    if arch not in ("native", "generic"):
        raise ValueError(f"GRU_TORCH_CPU_ARCH must be 'native' or 'generic', got {arch!r}")
    if arch == "native" and _cpu_has("avx2", "fma"):
        # at::vec picks its AVX2 implementation (exp/tanh through Sleef in libtorch), in
        # the namespace CPU_CAPABILITY names; the loops' AVX-512 copies are compiled too.
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
        if avx512_copies():
            flags.append("-DGRU_TORCH_CPU_AVX512")
    else:
        flags.append("-DCPU_CAPABILITY=DEFAULT")
    return flags


def avx512_copies() -> bool:
    """Whether the CPU loops get an AVX-512 copy (csrc/cpu/avx512.h): on x86-64 Linux,
    where the compiler is GCC. The CPU that builds need not have AVX-512."""
    import platform

    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


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


def gpu_present() -> bool:
    """Whether torch sees a CUDA device on this machine."""
    import torch

    return torch.cuda.is_available()


def want_cuda(setting: str | None) -> bool:
    """Whether to compile the .cu files. setting: None (where a GPU is present and the
    build is possible), "0" (never) or "1" (always; an error where it is impossible)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if setting == "0":
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if setting == "1":
        if not possible:
            raise RuntimeError(
                "GRU_TORCH_CUDA=1 but the CUDA build is impossible: "
                f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}")
        return True
    return possible and gpu_present()


# CPU seconds to compile, estimated from ninja's logs of builds on a 2-core x86-64 machine
# (g++ 12, nvcc 13): a C++ source with torch's headers about 20 s (without debug info), a
# kernel source for the emulator about 30 s, a .cu file about 45 s per GPU architecture.
CPP_SECONDS, EMU_SECONDS, CU_ARCH_SECONDS, LINK_SECONDS = 20, 30, 45, 15
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def plan(cuda: bool, cores: int | None = None) -> str:
    """One line saying what the build compiles and about how long it takes."""
    cores = max(1, cores or int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
    emulated = [s for s in EMULATOR_SOURCES if s.startswith("emu/")]
    work = [CPP_SECONDS] * (len(CPU_SOURCES) + len(EMULATOR_SOURCES) - len(emulated)
                            + len(AVX512_SOURCES))
    work += [EMU_SECONDS] * len(emulated)
    what = f"the C++ op and the CUDA emulator ({len(work)} sources)"
    if cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        n_arch = len([a for a in archs.replace(",", ";").replace(" ", ";").split(";") if a])
        cu = [s for s in CUDA_SOURCES if s.endswith(".cu")]
        work += [n_arch * CU_ARCH_SECONDS] * len(cu) + [CPP_SECONDS] * (len(CUDA_SOURCES) - len(cu))
        what += f" and the CUDA kernels ({len(cu)} .cu for {archs})"
    else:
        what += ", no CUDA kernels (no GPU here; GRU_TORCH_CUDA=1 adds them)"
    # ninja runs the files in parallel: bounded by the cores, and by the longest file
    seconds = max(sum(work) / cores, max(work)) + LINK_SECONDS
    minutes = max(1, round(seconds / 60))
    return (f"gru_torch: compiling {what}: about {minutes} minute{'s' * (minutes > 1)} on "
            f"{cores} idle core{'s' * (cores > 1)}, longer on a busy machine")


def extension(name: str, cuda_setting: str | None):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    src = csrc_dir()
    if src is None:
        raise FileNotFoundError(f"gru_torch: C++ sources not found in {CSRC_DIRS}")
    cpu = [os.path.relpath(src / s) for s in CPU_SOURCES + EMULATOR_SOURCES]
    last = [os.path.relpath(src / s) for s in AVX512_SOURCES]  # see AVX512_SOURCES
    cuda = want_cuda(cuda_setting)
    print(plan(cuda), file=sys.stderr, flush=True)
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        return CUDAExtension(
            name,
            cpu + [os.path.relpath(src / s) for s in CUDA_SOURCES] + last,
            include_dirs=[str(src)] + cuda_include_dirs(),
            extra_compile_args={"cxx": cxx_flags(), "nvcc": ["-O3", "-lineinfo"]},
        )
    return CppExtension(name, cpu + last, include_dirs=[str(src)],
                        extra_compile_args={"cxx": cxx_flags()})


if __name__ == "__main__":  # `python gru_torch/_build.py`: what a build here would compile
    default_cuda_home()
    print(plan(want_cuda(os.environ.get("GRU_TORCH_CUDA"))))
