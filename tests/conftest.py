"""Shared fixtures and helpers for the gru_torch tests.

Nothing here queries a GPU at import time: every backend listed by
`available_backends()` runs on the CPU.
"""
from __future__ import annotations

import os
import warnings

# On a GPU, the fused op NaN-fills its outputs before the kernels run, so a value a
# kernel fails to write shows (the emulator always does this). Read at the first op.
os.environ.setdefault("GRU_TORCH_POISON", "1")

import pytest
import torch

import gru_torch
import gru_torch.backends


def _extension_loaded() -> bool:
    """Whether the compiled op is loaded. The extension may be being rebuilt by someone
    else while the tests start; the status is cached by gru_torch after the first call,
    so a transient failure to import it would only show as a missing "fused" backend."""
    return bool(gru_torch.extension_status().loaded)


def pytest_report_header(config):
    """What the suite runs on: the build per device, and whether other work shares the
    cores (tests run far slower then)."""
    from gru_torch import machine

    threads = torch.get_num_threads()
    lines = [str(gru_torch.extension_status()),
             f"torch threads {threads}, physical cores {machine.physical_cores()}, "
             f"load average {machine.load_average()}"]
    note = machine.busy_note(threads)
    return lines + ([note] if note else [])


def available_backends() -> list[str]:
    """The backends that run on the CPU: "reference" and "cudnn" (nn.GRU) always,
    "fused" only where the compiled extension is loaded."""
    backends = ["reference", "cudnn"]
    if _extension_loaded():
        backends.append("fused")
    return backends


def keras_capable_backends() -> list[str]:
    """Backends that can run the reset_after=False cell (nn.GRU cannot)."""
    return [b for b in available_backends() if b != "cudnn"]


def dropout_backends() -> list[str]:
    """Backends that implement recurrent dropout (nn.GRU does not)."""
    return [b for b in available_backends() if b != "cudnn"]


def assert_close(actual, expected, atol=1e-10, rtol=0.0, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.fixture
def clear_warned():
    """gru_torch warns once per message per process; forget what was already said so a
    test expecting a warning sees it, and leave a clean slate for the next test."""
    gru_torch.backends._warned.clear()
    yield gru_torch.backends._warned
    gru_torch.backends._warned.clear()


class ResolveRecorder:
    """Wraps gru_torch.backends.resolve (called on every forward) to record which
    backend ran."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    @property
    def last(self) -> str:
        assert self.calls, "backends.resolve was never called"
        return self.calls[-1][1]


@pytest.fixture
def record_backend(monkeypatch):
    recorder = ResolveRecorder()
    original = gru_torch.backends.resolve

    def wrapped(requested, cfg):
        result = original(requested, cfg)
        recorder.calls.append((requested, result))
        return result

    monkeypatch.setattr(gru_torch.backends, "resolve", wrapped)
    return recorder


@pytest.fixture
def gru_warnings():
    """Records every warning (filter "always") and yields a function returning those
    emitted by gru_torch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield lambda: [str(w.message) for w in caught if "gru_torch" in str(w.message)]


@pytest.fixture(params=["emulated", "cuda"])
def kind(request):
    """Where a CUDA kernel test runs: "emulated" (the CUDA emulator on the CPU, always)
    and "cuda" (a real GPU, skipped where none is). The GPU is asked lazily, when the
    test runs, never at import."""
    if request.param == "cuda" and not (torch.cuda.is_available() and gru_torch.extension_status().cuda):
        pytest.skip("no CUDA GPU here (or the CUDA kernels are not built); the emulated run "
                    "covers the same kernel source")
    return request.param

