"""The fused CPU op's two copies of its loops (csrc/cpu/capability.h): AVX2 and AVX-512,
chosen at run time. Both must give the same bits, for every cell of the GRU op and the
family op, forward and backward; and no code outside the AVX-512 copy may use AVX-512
instructions, or a CPU without them would fault in it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gru_torch
from gru_torch import ops
from gru_torch.cellspec import Cell

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="the fused extension is not loaded")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
needs_avx512 = pytest.mark.skipif("avx512" not in gru_torch.cpu_capabilities(),
                                  reason="this CPU (or build) has no AVX-512")


@pytest.fixture
def restore_capability():
    before = gru_torch.cpu_capability()
    yield
    gru_torch.set_cpu_capability(before)


def test_the_widest_capability_the_cpu_has_is_listed_first():
    have = gru_torch.cpu_capabilities()
    assert have and gru_torch.cpu_capability() in have
    x86 = bool(_cpu_flags() & {"avx2"})
    if x86 and AVX512 <= _cpu_flags():
        assert have[0] == "avx512", have
    if x86 and not AVX512 <= _cpu_flags():
        assert "avx512" not in have, have


def test_an_unknown_or_unavailable_capability_is_refused(restore_capability):
    with pytest.raises(ValueError, match="'sse2' is not available.*can run"):
        gru_torch.set_cpu_capability("sse2")
    with pytest.raises(TypeError, match="name must be a str"):
        gru_torch.set_cpu_capability(512)
    with pytest.raises(RuntimeError, match="unknown CPU capability 'sse2'"):
        torch.ops.gru_torch._set_cpu_capability("sse2")
    assert gru_torch.cpu_capability() in gru_torch.cpu_capabilities()


def test_the_environment_variable_chooses_and_a_bad_value_is_named():
    """GRU_TORCH_CPU_CAPABILITY is read once, at the op's first use in a process."""
    code = ("import gru_torch, torch; print(gru_torch.cpu_capability()); "
            "x = torch.randn(3, 2, 4); gru_torch.GRU(4, 5, backend='fused')(x)")
    env = {"GRU_TORCH_CPU_CAPABILITY": gru_torch.cpu_capabilities()[-1]}
    run = subprocess.run([sys.executable, "-c", code], env=_env(env), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == gru_torch.cpu_capabilities()[-1]
    run = subprocess.run([sys.executable, "-c", code],
                         env=_env({"GRU_TORCH_CPU_CAPABILITY": "avx9"}),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "GRU_TORCH_CPU_CAPABILITY: unknown CPU capability 'avx9'" in run.stderr


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


# H = 37: two 16-float vectors and a short one (four 8-float and a short one); B = 13
# rows: row tiles of either width's micro-kernel and a ragged last tile.
T, B, I, H = 7, 13, 9, 37
CELLS = [Cell("gru", True), Cell("gru", False),
         Cell("gru", True, recurrent_activation="hard_sigmoid_keras2"),
         Cell("gru", False, recurrent_activation="hard_sigmoid_keras2"),
         Cell("lstm"), Cell("lstm", recurrent_activation="hard_sigmoid_keras3"),
         Cell("rnn"), Cell("rnn", activation="relu")]


def _args(cell: Cell, D: int, masks: str | None, dtype):
    g = torch.Generator().manual_seed(3)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    def mask(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) > 0.3).to(dtype) / 0.7

    G = cell.gates * H
    M = 0 if masks is None else (1 if masks == "shared" else cell.gates)
    two_biases = not (cell.kind == "gru" and not cell.reset_after)
    return (cell, rand(T, B, I), rand(D, B, H), rand(D, B, H) if cell.has_c else None,
            rand(D, G, I, scale=0.4), rand(D, G, H, scale=0.4), rand(D, G),
            rand(D, G) if two_biases else None, None,
            mask(D, B, max(M, 1), I) if masks else None, mask(D, B, M, H) if M else None,
            torch.randint(1, T + 1, (B,), generator=g))


def _run(args):
    out, h_n, c_n = ops.rnn_layer(*args)
    g = torch.Generator().manual_seed(4)
    # the loss reads the final state, and every output, as a classifier and a tagger do
    loss = (h_n * torch.randn(h_n.shape, generator=g, dtype=h_n.dtype)).sum() \
        + (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() * 1e-3
    if c_n is not None:
        loss = loss + c_n.sum()
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return [out, h_n] + ([c_n] if c_n is not None else []) + list(torch.autograd.grad(loss, leaves))


# float32, which training runs, in every layout; float64 in one
CASES = [(cell, D, masks, torch.float32) for cell in CELLS for D in (1, 2)
         for masks in (None, "shared", "per_gate")] + \
        [(cell, 2, "per_gate", torch.float64) for cell in CELLS]


@needs_avx512
@pytest.mark.parametrize("cell, D, masks, dtype", CASES,
                         ids=[f"{c.describe()}-{D}-{m}-{str(t)[6:]}" for c, D, m, t in CASES])
def test_avx512_and_avx2_give_the_same_bits(cell, D, masks, dtype, restore_capability):
    """float32, which training runs: the same bits, outputs and every gradient, so a
    figure measured with one copy holds for the other."""
    args = _args(cell, D, masks, dtype)
    gru_torch.set_cpu_capability("avx2")
    want = _run(args)
    gru_torch.set_cpu_capability("avx512")
    got = _run(args)
    for i, (a, b) in enumerate(zip(want, got)):
        if dtype == torch.float32:
            assert torch.equal(a, b), (f"result {i}: max difference "
                                       f"{(a - b).abs().max().item():.3g}")
        else:  # float64's exp is Sleef's, whose AVX2 and AVX-512 builds differ in the last bit
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13, msg=f"result {i}")


X_CASES = [(cell, D, masks) for cell in CELLS if cell.kind != "gru" for D in (1, 2)
           for masks in (None, "shared", "per_gate")]


@needs_avx512
@pytest.mark.parametrize("cell, D, masks", X_CASES,
                         ids=[f"{c.describe()}-{D}-{m}" for c, D, m in X_CASES])
def test_the_inference_forward_gives_the_same_bits(cell, D, masks, restore_capability):
    """The LSTM's and the RNNs' inference forward (family_layer_x, the input projection
    in the step's GEMM) on both copies: the same bits."""
    args = list(_args(cell, D, masks, torch.float32))
    args[9] = None  # no input masks: inference takes family_layer_x
    results = []
    for capability in ("avx2", "avx512"):
        gru_torch.set_cpu_capability(capability)
        with torch.no_grad():
            out, h_n, c_n = ops.rnn_layer(*args)
        results.append([out, h_n] + ([c_n] if c_n is not None else []))
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"result {i}: max difference {(a - b).abs().max().item():.3g}"


# ---- no AVX-512 instruction outside the AVX-512 copy

# A register only AVX-512 has: zmm, xmm/ymm 16-31, or a mask register k0-k7.
_AVX512_OPERAND = re.compile(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b")


def test_no_function_outside_the_avx512_copy_uses_avx512():
    """The linker keeps one copy of each inline function; it must be the baseline's, or an
    AVX2-only CPU would fault in code that every call runs (csrc/cpu/avx512.h)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    if "avx512" not in _compiled_copies():
        pytest.skip("this build has no AVX-512 copy")
    lib = _library()
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", str(lib)],
                          capture_output=True, text=True, check=True).stdout
    # Only a global or weak function is shared with the baseline's code; a local one (a
    # static function, a compiler's clone) is called from its own object file alone.
    nm = subprocess.run(["nm", "-C", "--defined-only", _library()], capture_output=True,
                        text=True, check=True).stdout
    shared = {m.group(2) for m in re.finditer(r"^[0-9a-f]+ ([TWVu]) (.*)$", nm, re.M)}
    offenders, in_avx512_copy, name = set(), 0, ""
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1)
            continue
        if not _AVX512_OPERAND.search(line):
            continue
        if "::AVX512::" in name:
            in_avx512_copy += 1
        elif name in shared:
            offenders.add(name)
    assert in_avx512_copy > 0, "found no AVX-512 code in the AVX-512 copy"
    assert not offenders, f"AVX-512 code outside the AVX-512 copy: {sorted(offenders)[:10]}"


def _library() -> str:
    import importlib

    return importlib.import_module("gru_torch._C").__file__


def _compiled_copies() -> set[str]:
    """The copies compiled in, whatever this CPU can run: the symbols' namespaces."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    syms = subprocess.run([nm, "-C", _library()], capture_output=True, text=True,
                          check=True).stdout
    return {"avx512"} if "gru_torch::cpu::AVX512::" in syms else set()
