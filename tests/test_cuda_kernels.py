"""The fused GRU's CUDA kernels (csrc/device/gru_persistent.cuh, gru_stepwise.cuh)
against the float64 reference: under the emulator on the CPU on every run, with the
race checker on, and on a GPU where one is present.

Each run starts from fresh random inputs (never zeros); the op NaN-fills its outputs
before the kernels run (the emulator always, a GPU with GRU_TORCH_POISON=1, which
conftest sets), so a value a kernel fails to write fails the comparison. Tolerances
follow gru_torch.selfcheck: a low-precision result may stray from the float64
reference by a few times what the reference itself strays at that precision.
"""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

import gru_torch
from gru_torch.cellspec import Cell
from gru_torch import ops, selfcheck, testing
from gru_torch.selfcheck import Problem

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="gru_torch extension not built")


# dtype label -> (torch dtype, TF32 on)
DTYPES = {"tf32": (torch.float32, True), "bf16": (torch.bfloat16, True),
          "f16": (torch.float16, True), "f32": (torch.float32, False),
          "f64": (torch.float64, False)}


@contextlib.contextmanager
def device_for(kind: str, tf32: bool, gpu: str | None = None, **emulator):
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if kind == "emulated":
            with testing.emulate_cuda(**({"gpu": gpu} if gpu else {}), **emulator):
                yield torch.device("cpu")
        else:
            yield torch.device("cuda")
    finally:
        torch.backends.cudnn.allow_tf32 = old


def run_case(kind: str, label: str, p: Problem, **emulator):
    """The fused layer's results for problem p, and the mismatches against the reference."""
    dtype, tf32 = DTYPES[label]
    with device_for(kind, tf32, **emulator) as device:
        args = selfcheck.make_args(p, dtype, device)
        go, gh = selfcheck.output_gradients(p)
        found = selfcheck.results(ops.gru_layer, args, go, gh)
        precision = selfcheck.precision_of(dtype)
    assert all(torch.isfinite(v).all() for v in found.values()), "a value was never written"
    return found, selfcheck.mismatches(found, args, go, gh, precision)


def check(kind, label, p, **emulator):
    found, problems = run_case(kind, label, p, **emulator)
    assert not problems, f"{label} {p}: " + "; ".join(problems)
    return found


# ---------------------------------------------------------------- the persistent path
# H = 20 and 40 are not multiples of 16 (padded to 32 and 64), B = 19 is not a multiple
# of the 16-row tile; lengths include T and 1; the mask is recurrent dropout.
CORE = list(itertools.product(["tf32", "bf16", "f16"], [True, False], [1, 2]))


@pytest.mark.parametrize("label,reset_after,D", CORE, ids=[f"{l}-ra{int(r)}-D{d}" for l, r, d in CORE])
def test_persistent_matches_reference(kind, label, reset_after, D):
    check(kind, label, Problem(T=6, B=19, I=5, H=20, D=D, reset_after=reset_after, seed=D))


@pytest.mark.parametrize("label", ["tf32", "bf16", "f16"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_persistent_h100_weights_partly_in_shared_memory(kind, label, reset_after):
    """H = 100 pads to 128, where tf32 W_hh no longer fits in registers: part of it is
    read from shared memory every step."""
    check(kind, label, Problem(T=3, B=5, I=3, H=100, D=1, reset_after=reset_after, seed=7))


@pytest.mark.parametrize("label", ["bf16", "f16"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_persistent_h256_on_a_cluster_of_two(kind, label, reset_after):
    """16-bit H = 200 pads to 256: on an H100 each 16-row tile runs on a cluster of two
    CTAs that swap their halves of every A tile through distributed shared memory."""
    if kind == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("clusters need sm_90; this GPU takes the per-step path for H = 200")
    check(kind, label, Problem(T=3, B=18, I=4, H=200, D=2, reset_after=reset_after, seed=13), gpu="h100")


@pytest.mark.parametrize("reset_after", [True, False])
def test_persistent_h40_no_mask_no_lengths_no_bias(kind, reset_after):
    check(kind, "bf16", Problem(T=4, B=3, I=4, H=40, D=2, reset_after=reset_after, mask=False,
                                lengths=False, bias=False, seed=3))


@pytest.mark.parametrize("label", ["tf32", "bf16"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_one_step(kind, label, reset_after):
    check(kind, label, Problem(T=1, B=4, I=3, H=20, D=2, reset_after=reset_after, seed=5))


# ---------------------------------------------------------------- the per-step path
STEPWISE = [("f32", 20, True), ("f32", 20, False), ("f64", 20, False),
            ("bf16", 130, True), ("f16", 7, False)]


@pytest.mark.parametrize("label,H,reset_after", STEPWISE,
                         ids=[f"{l}-H{h}-ra{int(r)}" for l, h, r in STEPWISE])
def test_stepwise_matches_reference(kind, label, H, reset_after):
    """Exact float32 (TF32 off), float64, H > 128 and odd H take per-step GEMMs with
    a fused pointwise kernel."""
    check(kind, label, Problem(T=4, B=5, I=3, H=H, D=2, reset_after=reset_after, seed=11))


def test_output_gradient_starting_at_an_odd_element(kind):
    """The kernels read grad_output two elements at a time; a gradient that is a view
    starting at an odd element (a slice of a larger buffer) still works."""
    p = Problem(T=3, B=5, I=3, H=20, D=1, mask=False, lengths=False, seed=4)
    with device_for(kind, True) as device:
        args = selfcheck.make_args(p, torch.bfloat16, device)
        layer, backward = ((torch.ops.gru_torch.gru_layer_emulated, torch.ops.gru_torch.gru_layer_backward_emulated)
                           if kind == "emulated" else
                           (torch.ops.gru_torch.gru_layer, torch.ops.gru_torch.gru_layer_backward))
        out, h_n, reserve = layer(*args, True)
        big = torch.randn(out.numel() + 1, dtype=out.dtype, device=device)
        g = big[1:].view(out.shape)  # contiguous, at an odd element offset
        assert g.data_ptr() % 4 == 2
        grads = backward(g, torch.zeros_like(h_n), *args[:8], p.reset_after, reserve, out)
        expected = backward(g.clone(), torch.zeros_like(h_n), *args[:8], p.reset_after, reserve, out)
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)


# ---------------------------------------------------------------- order independence
@pytest.mark.parametrize("label,reset_after", [("tf32", True), ("bf16", False), ("f32", False)])
def test_shuffled_thread_order_gives_the_same_bits(label, reset_after):
    """Threads resumed in a seeded random order (with random yields at shared-memory
    accesses) give bit-identical results: nothing depends on the order."""
    p = Problem(T=5, B=17, I=4, H=20, D=2, reset_after=reset_after, seed=9)
    plain, _ = run_case("emulated", label, p)
    for seed in (1, 2):
        shuffled, _ = run_case("emulated", label, p, shuffle_seed=seed)
        for name in plain:
            assert torch.equal(plain[name], shuffled[name]), f"{name} differs with shuffle_seed={seed}"


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_runs_under_both_gpus_limits(gpu):
    check("emulated", "bf16", Problem(T=3, B=18, I=3, H=100, D=2, seed=2), gpu=gpu)


# ---------------------------------------------------------------- through the module
@pytest.mark.parametrize("reset_after", [True, False])
def test_two_layer_bidirectional_module(kind, reset_after):
    """gru_torch.GRU with backend="fused": 2 layers, both directions, recurrent
    dropout (the same masks on both sides, from the same seed) and lengths, against the
    reference loop."""
    torch.manual_seed(0)
    gru = gru_torch.GRU(6, 20, num_layers=2, bidirectional=True, batch_first=True,
                        reset_after=reset_after, recurrent_dropout=0.3, backend="fused")
    ref = gru_torch.GRU(6, 20, num_layers=2, bidirectional=True, batch_first=True,
                        reset_after=reset_after, recurrent_dropout=0.3, backend="reference")
    ref.load_state_dict(gru.state_dict())
    x = torch.randn(5, 7, 6)
    lengths = torch.tensor([7, 1, 4, 6, 2])
    with device_for(kind, True) as device:
        gru.to(device)
        torch.manual_seed(1)
        xd = x.detach().clone().to(device).requires_grad_()
        out, h_n = gru(xd, lengths=lengths)
        (out.square().sum() + h_n.sum()).backward()
    torch.manual_seed(1)
    xr = x.clone().requires_grad_()
    ref_out, ref_h = ref(xr, lengths=lengths)
    (ref_out.square().sum() + ref_h.sum()).backward()
    tol = 2e-2  # tf32 operands over two layers
    torch.testing.assert_close(out.detach().cpu(), ref_out.detach(), atol=tol, rtol=0)
    torch.testing.assert_close(xd.grad.cpu(), xr.grad, atol=5 * tol, rtol=0)
    for (name, p), q in zip(gru.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, atol=5 * tol, rtol=0, msg=name)


# ---------------------------------------------------------------- launch limits
NOTEBOOK_BT = [(32, 200), (512, 200), (512, 500), (100, 300)]


@pytest.mark.parametrize("gpu", ["a100", "h100"])
@pytest.mark.parametrize("H", [32, 64, 100, 128, 256])
def test_launches_fit_both_gpus_at_notebook_shapes(gpu, H):
    """The launcher's grid, block and shared memory for every notebook shape, each
    dtype, cell and direction count pass the emulator's launch checks for the GPU."""
    seen = set()
    for (B, T), dtype, tf32, reset_after, D in itertools.product(
            NOTEBOOK_BT, ["float32", "bfloat16", "float16"], [True, False], [True, False], [1, 2]):
        if dtype != "float32" and not tf32:
            continue
        seen.update(torch.ops.gru_torch._gru_launch_check(dtype, H, B, T, D, 0 if reset_after else 1,
                                                          tf32, gpu))
    kinds = {line.split()[0] for line in seen}
    persistent = H <= 128 or (H <= 256 and gpu == "h100")  # H = 256: a cluster of two (sm_90)
    assert kinds == ({"gru_forward", "gru_backward", "gru_step"} if persistent else {"gru_step"}), seen


# ---------------------------------------------------------------- the self-check
def test_self_check_passes_on_the_emulated_kernel():
    with testing.emulate_cuda():
        assert selfcheck.self_check(ops.gru_layer, torch.device("cpu"), torch.bfloat16, True) is None
        assert selfcheck.self_check(ops.gru_layer, torch.device("cpu"), torch.float16, False) is None


def test_self_check_names_a_wrong_kernel():
    """A kernel 10% off in its output (and so in every gradient through it) is named;
    bfloat16's own error over the check's 7 steps is a few percent at most."""
    def wrong(*args):
        out, h_n = ops.gru_layer(*args)
        return out * 1.1, h_n

    with testing.emulate_cuda():
        found = selfcheck.self_check(wrong, torch.device("cpu"), torch.bfloat16, True)
    assert found and "output" in found and "d_w_hh" in found and "h_n" not in found


def test_failed_self_check_falls_back_with_one_warning(monkeypatch, clear_warned, gru_warnings):
    """A CUDA kernel that fails its self-check is never used: forced or auto, the
    backend falls back (to nn.GRU where it can express the configuration, else the
    reference) and says so once."""
    from gru_torch import backends

    monkeypatch.setattr(ops, "unsupported_reason", lambda device, dtype: None)
    monkeypatch.setattr(ops, "_self_checked", {})
    monkeypatch.setattr(selfcheck, "tf32_enabled", lambda: True)
    monkeypatch.setattr(selfcheck, "self_check", lambda fn, device, dtype, ra: "d_w_hh: max error 3 > allowed 0.1")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cuda = torch.device("cuda", 0)
    cfg = backends.Config(cuda, torch.float32, Cell("gru", True), False)
    assert backends.resolve("fused", cfg) == "cudnn"
    assert backends.resolve("fused", cfg) == "cudnn"
    keras_cfg = backends.Config(cuda, torch.float32, Cell("gru", False), False)
    assert backends.resolve("auto", keras_cfg) == "reference"
    warnings = gru_warnings()
    assert len([w for w in warnings if "self-check" in w and "(float32, GRU)" in w]) == 1
    assert any("d_w_hh: max error 3" in w for w in warnings)


def test_auto_on_a_gpu_prefers_cudnn_where_it_can(monkeypatch):
    from gru_torch import backends

    monkeypatch.setattr(ops, "unsupported_reason", lambda device, dtype: None)
    monkeypatch.setattr(ops, "self_check_failure", lambda device, dtype, cell: None)
    cuda = torch.device("cuda", 0)
    assert backends.resolve("auto", backends.Config(cuda, torch.float32, Cell("gru", True), False)) == "cudnn"
    assert backends.resolve("auto", backends.Config(cuda, torch.float32, Cell("gru", False), False)) == "fused"
    assert backends.resolve("auto", backends.Config(cuda, torch.float32, Cell("gru", True), True)) == "fused"
    assert backends.resolve("fused", backends.Config(cuda, torch.float32, Cell("gru", True), False)) == "fused"
