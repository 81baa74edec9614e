"""Builds gru_torch._C. Metadata lives in pyproject.toml.

The CUDA sources are compiled where a GPU is present (with a CUDA toolkit and a CUDA
build of torch); GRU_TORCH_CUDA=1 compiles them on a machine without one. Switches:
  GRU_TORCH_CUDA=0      build the C++ (CPU) op only
  GRU_TORCH_CUDA=1      build the CUDA kernels too, GPU or not; fail if it cannot be done
  GRU_TORCH_CPU_ARCH    "native" (default: AVX2+FMA when this machine has them) or "generic"
  TORCH_CUDA_ARCH_LIST  GPU architectures (default "8.0;9.0+PTX")
"""
import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).parent / "gru_torch"))
import _build  # noqa: E402  (shared with the JIT build in gru_torch/_ext.py)

_build.default_cuda_home()  # before torch.utils.cpp_extension reads it
from torch.utils.cpp_extension import BuildExtension  # noqa: E402

setup(
    ext_modules=[_build.extension("gru_torch._C", os.environ.get("GRU_TORCH_CUDA"))],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
