"""Codegen of the CUDA kernels, read from the built library with cuobjdump (no GPU
needed): no spills in a step loop, HMMA in every persistent kernel, registers within
one CTA an SM, for sm_80 and sm_90."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import gru_torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sass_report.py"
spec = importlib.util.spec_from_file_location("sass_report", SCRIPT)
sass_report = importlib.util.module_from_spec(spec)
sys.modules["sass_report"] = sass_report  # dataclasses look their module up
spec.loader.exec_module(sass_report)

TOOL = sass_report.find_cuobjdump()
pytestmark = [
    pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="gru_torch extension not built"),
    pytest.mark.skipif(not gru_torch.extension_status().cuda,
                       reason="the extension was built without its CUDA sources (GRU_TORCH_CUDA=1 builds them)"),
    pytest.mark.skipif(TOOL is None, reason="cuobjdump not found (CUDA toolkit or triton's copy)"),
]


@pytest.fixture(scope="module")
def report():
    return sass_report.report(sass_report.find_library(), TOOL)


@pytest.mark.parametrize("arch", sass_report.ARCHS)
def test_every_kernel_keeps_the_codegen_rules(report, arch):
    kernels = report[arch]
    assert kernels, f"no {arch} code in the library"
    broken = {k.name: k.problems for k in kernels if k.problems}
    assert not broken, broken


@pytest.mark.parametrize("arch", sass_report.ARCHS)
def test_persistent_kernels_use_tensor_cores_in_their_step_loops(report, arch):
    persistent = [k for k in report[arch] if "gru_forward" in k.name or "gru_backward" in k.name]
    # 3 operand types x 3 padded sizes (+ 256 for the two 16-bit ones) x 2 passes x 5
    # cells (GRU x 2, shared by the GRU op and the family op; LSTM; RNN tanh and relu)
    assert len(persistent) == 110, [k.name for k in persistent]
    cells = {sass_report._CONFIG.search(k.name).group("cell") for k in persistent}
    assert cells == {"GruAfter", "GruBefore", "Lstm", "Rnn<false>", "Rnn<true>"}, cells
    for k in persistent:
        if arch == "sm_80" and sass_report.cluster_of(k.name) > 1:
            # clusters need sm_90: there the kernel is a trap alone, never launched
            assert k.step_loops == 0 and k.hmma == 0, k.name
            continue
        assert k.step_loops >= 1 and k.loop_hmma > 0, k.name
        assert k.loop_spills == 0, k.name


def test_the_checker_sees_a_spill():
    """The rule is not vacuous: a kernel with LDL in its step loop is flagged."""
    k = sass_report.Kernel(name="gt::cuda::gru::gru_forward<...>", mangled="x", registers=200,
                           threads=256, loop_spills=2, loop_hmma=48)
    assert any("LDL/STL in a step loop" in p for p in sass_report.rules(k))
    k2 = sass_report.Kernel(name="gt::cuda::gru::gru_step<...>", mangled="y", registers=40, threads=256,
                            spills=1)
    assert sass_report.rules(k2)
    k3 = sass_report.Kernel(name="gt::cuda::gru::gru_backward<...>", mangled="z", registers=255,
                            threads=512, loop_hmma=8)
    assert any("one CTA an SM" in p for p in sass_report.rules(k3))
    k4 = sass_report.Kernel(name="gt::cuda::gru::gru_forward<gt::cuda::gru::Config<gt::cuda::bf16, "
                                 "gt::cuda::gru::OpBF16, gt::cuda::gru::GruAfter, 256, 8, 10, false, 2, "
                                 "true> >", mangled="w", registers=90, threads=256, hmma=96,
                            step_loops=1, loop_hmma=96)
    assert sass_report.cluster_of(k4.name) == 2
    assert any("never runs" in p for p in sass_report.rules(k4, "sm_80"))
    assert not sass_report.rules(k4, "sm_90")


def test_step_loops_are_found_from_backward_branches():
    instrs = [(0x00, "MOV R1, R2"), (0x10, "HMMA.16816.F32 R4, R8, R12, R4"), (0x20, "BAR.SYNC 0x0"),
              (0x30, "STL [R1], R4"), (0x40, "@P0 BRA 0x10"), (0x50, "LDL R4, [R1]"), (0x60, "EXIT")]
    assert sass_report.step_loops(instrs) == [(0x10, 0x40)]


@pytest.mark.parametrize("arch", sass_report.ARCHS)
def test_every_persistent_kernel_has_its_block_size(report, arch):
    """The registers x threads rule needs each kernel's threads, read from its template
    arguments: a name the parser cannot read would leave it unchecked."""
    for k in report[arch]:
        if "gru_forward" in k.name or "gru_backward" in k.name:
            assert k.threads in (128, 256), (k.name, k.threads)
