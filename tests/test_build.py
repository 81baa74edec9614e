"""What the build compiles, what it says, and what extension_status() reports per device."""
from __future__ import annotations

import pytest
import torch

import gru_torch
from gru_torch import _build


@pytest.fixture
def cuda_possible(monkeypatch):
    """A CUDA build of torch and a toolkit, as on a CI machine."""
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp, "CUDA_HOME", "/usr/local/cuda")


def test_cuda_sources_build_by_default_only_where_a_gpu_is(cuda_possible, monkeypatch):
    monkeypatch.setattr(_build, "gpu_present", lambda: False)
    assert _build.want_cuda(None) is False
    assert _build.want_cuda("1") is True, "GRU_TORCH_CUDA=1 forces them (CI)"
    monkeypatch.setattr(_build, "gpu_present", lambda: True)
    assert _build.want_cuda(None) is True
    assert _build.want_cuda("0") is False


def test_forced_cuda_build_that_cannot_happen_says_why(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="GRU_TORCH_CUDA=1 but the CUDA build is impossible"):
        _build.want_cuda("1")


def test_plan_says_what_and_how_long(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    cpu = _build.plan(cuda=False, cores=2)
    n_cpu = len(_build.CPU_SOURCES) + len(_build.EMULATOR_SOURCES) + len(_build.AVX512_SOURCES)
    assert f"the C++ op and the CUDA emulator ({n_cpu} sources), no CUDA kernels" in cpu
    assert "GRU_TORCH_CUDA=1" in cpu and "minute" in cpu
    gpu = _build.plan(cuda=True, cores=2)
    n_cu = len([s for s in _build.CUDA_SOURCES if s.endswith(".cu")])
    assert f"{n_cu} .cu for" in gpu and _build.DEFAULT_CUDA_ARCHS in gpu
    minutes = [int(s.split("about ")[1].split()[0]) for s in (cpu, gpu)]
    assert minutes[1] > minutes[0], "nvcc adds time"


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the built op")
def test_status_reports_each_device():
    st = gru_torch.extension_status()
    assert set(st.devices) == {"cpu", "cuda"}
    assert st.devices["cpu"] is True
    assert st.devices["cuda"] is st.cuda
    text = str(st)
    assert "cpu yes" in text and f"cuda {'yes' if st.cuda else 'no'}" in text


def test_status_when_not_loaded():
    st = gru_torch._ext.ExtStatus(False, "none", False, "disabled by GRU_TORCH_DISABLE_EXT=1")
    assert st.devices == {"cpu": False, "cuda": False}
    assert "not loaded: disabled" in str(st)


def test_debug_info_is_left_out_unless_asked(monkeypatch):
    monkeypatch.delenv("GRU_TORCH_DEBUG_INFO", raising=False)
    assert "-g0" in _build.cxx_flags()
    monkeypatch.setenv("GRU_TORCH_DEBUG_INFO", "1")
    assert "-g0" not in _build.cxx_flags()
    monkeypatch.setenv("GRU_TORCH_DEBUG_INFO", "yes")
    with pytest.raises(ValueError, match="GRU_TORCH_DEBUG_INFO must be '0' or '1', got 'yes'"):
        _build.cxx_flags()
