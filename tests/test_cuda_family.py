"""The persistent CUDA kernels through the family op on a device (csrc/device/cells.cuh):
the LSTM, the RNN (tanh, relu) and the GRU where the GRU op cannot run it (the Keras
hard sigmoids; input masks of two directions), by gru_torch.ops.rnn_layer ->
family_layer on CUDA, or family_layer_emulated on CPU tensors under the emulator, against the
float64 reference loop: output, h_n, c_n and the gradient of every argument (input, hx,
cx, W_ih, W_hh, both biases), with ragged lengths, H not a multiple of 16, B not a
multiple of the 16-row tile, recurrent dropout, both directions, every gate function;
under the emulator on every run with the race checker on, and on a GPU where one is
present.

The tolerance is gru_torch.selfcheck's rule: a low-precision result may stray from the
float64 reference by a few times what the reference itself strays at that precision.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

import gru_torch
from gru_torch import ops, selfcheck
from gru_torch.cellspec import Cell
from gru_torch.reference import rnn_layer_reference
from test_cuda_kernels import DTYPES, device_for

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="gru_torch extension not built")

CELLS = {"tanh": Cell("rnn"), "relu": Cell("rnn", activation="relu"), "lstm": Cell("lstm"),
         "lstm-hard2": Cell("lstm", recurrent_activation="hard_sigmoid_keras2"),
         "lstm-hard3": Cell("lstm", recurrent_activation="hard_sigmoid_keras3"),
         "gru-hard2": Cell("gru", True, recurrent_activation="hard_sigmoid_keras2"),
         "gru-before-hard2": Cell("gru", False, recurrent_activation="hard_sigmoid_keras2"),
         "gru-before-hard3": Cell("gru", False, recurrent_activation="hard_sigmoid_keras3")}
NAMES = ("input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh")


@dataclass(frozen=True)
class RnnProblem:
    T: int = 5
    B: int = 19
    I: int = 4
    H: int = 20
    D: int = 2
    mask: bool = True
    lengths: bool = True
    seed: int = 0


def make_args(p: RnnProblem, dtype, device, cell: Cell) -> tuple:
    """Fresh random arguments (never zeros) at nn.RNN's weight scale: x, hx, cx (None
    but for the LSTM), W_ih, W_hh, b_ih, b_hh, the recurrent mask, lengths (which
    include T and 1)."""
    g = torch.Generator().manual_seed(p.seed)
    k = p.H ** -0.5
    G = cell.gates * p.H

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    x = torch.randn(p.T, p.B, p.I, generator=g, dtype=torch.float64)
    hx = torch.randn(p.D, p.B, p.H, generator=g, dtype=torch.float64) * 0.5
    cx = torch.randn(p.D, p.B, p.H, generator=g, dtype=torch.float64) if cell.has_c else None
    w_ih, w_hh = uniform(p.D, G, p.I), uniform(p.D, G, p.H)
    b_ih, b_hh = uniform(p.D, G), uniform(p.D, G)
    if cell.kind == "gru" and not cell.reset_after:
        b_hh = None  # (one bias, as Keras's reset_after=False GRU)
    # one recurrent mask for every gate: [D, B, 1, H]
    mask = ((torch.rand(p.D, p.B, 1, p.H, generator=g) > 0.25).double() / 0.75) if p.mask else None
    lengths = None
    if p.lengths:
        lengths = torch.randint(1, p.T + 1, (p.B,), generator=g)
        lengths[0] = p.T
        lengths[1] = 1
    moved = [None if t is None else t.to(device=device, dtype=dtype)
             for t in (x, hx, cx, w_ih, w_hh, b_ih, b_hh, mask)]
    return (*moved, lengths)


def results(layer, cell: Cell, args: tuple, go, gh, gc) -> dict:
    """Output, h_n, c_n and the gradient of every floating argument, float64 on the CPU."""
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, mask, lengths = args
    named = {n: t.detach().requires_grad_() for n, t in zip(NAMES, (x, hx, cx, w_ih, w_hh, b_ih, b_hh))
             if t is not None}
    out, h_n, c_n = layer(cell, named["input"], named["hx"], named.get("cx"), named["w_ih"],
                          named["w_hh"], named["b_ih"], named.get("b_hh"), None, None, mask, lengths)
    loss = (out * go.to(out)).sum() + (h_n * gh.to(h_n)).sum()
    found = {"output": out, "h_n": h_n}
    if cell.has_c:
        loss = loss + (c_n * gc.to(c_n)).sum()
        found["c_n"] = c_n
    grads = torch.autograd.grad(loss, list(named.values()))
    found.update({f"d_{n}": g for n, g in zip(named, grads)})
    return {k: v.detach().to("cpu", torch.float64) for k, v in found.items()}


def cotangents(p: RnnProblem):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(p.T, p.B, p.D * p.H, generator=g, dtype=torch.float64),
            torch.randn(p.D, p.B, p.H, generator=g, dtype=torch.float64),
            torch.randn(p.D, p.B, p.H, generator=g, dtype=torch.float64))


def check(kind: str, label: str, act: str, p: RnnProblem, **emulator):
    dtype, tf32 = DTYPES[label]
    cell = CELLS[act]
    cots = cotangents(p)
    with device_for(kind, tf32, **emulator) as device:
        found = results(ops.rnn_layer, cell, make_args(p, dtype, device, cell), *cots)
        precision = selfcheck.precision_of(dtype)
    assert all(torch.isfinite(v).all() for v in found.values()), "a value was never written"
    exact = results(rnn_layer_reference, cell, make_args(p, torch.float64, "cpu", cell), *cots)
    peer = None
    if precision in selfcheck.PEER:
        peer = results(rnn_layer_reference, cell, make_args(p, selfcheck.PEER[precision], "cpu", cell),
                       *cots)
    problems = selfcheck.compare(found, exact, peer, precision)
    assert not problems, f"{label} {act} {p}: " + "; ".join(problems)


# H = 20 pads to 32 (not a multiple of 16), B = 19 is not a multiple of the 16-row tile;
# lengths include T and 1; the mask is recurrent dropout.
CORE = list(itertools.product(["tf32", "bf16"], ["tanh", "relu"], [1, 2]))


@pytest.mark.parametrize("label,act,D", CORE, ids=[f"{l}-{a}-D{d}" for l, a, d in CORE])
def test_rnn_matches_reference(kind, label, act, D):
    check(kind, label, act, RnnProblem(D=D, seed=D))


LSTM = list(itertools.product(["tf32", "bf16"], [1, 2]))


@pytest.mark.parametrize("label,D", LSTM, ids=[f"{l}-D{d}" for l, d in LSTM])
def test_lstm_matches_reference(kind, label, D):
    check(kind, label, "lstm", RnnProblem(D=D, seed=10 + D))


@pytest.mark.parametrize("gate", ["lstm-hard2", "lstm-hard3"])
def test_lstm_hard_sigmoid_gates(kind, gate):
    check(kind, "bf16", gate, RnnProblem(T=4, B=18, H=20, D=2, seed=21))


@pytest.mark.parametrize("label", ["tf32", "bf16"])
def test_lstm_h100_w_hh_partly_in_shared_memory(kind, label):
    """H = 100 pads to 128, where the LSTM's W_hh (4/3 of the GRU's) no longer fits in
    registers: its last k-tiles are read from shared memory every step."""
    if kind == "cuda" and label == "tf32" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tf32 LSTM W_hh at HP = 128 takes more shared memory than an A100 has")
    check(kind, label, "lstm", RnnProblem(T=3, B=5, I=3, H=100, D=1, seed=7), gpu="h100")


GRU = [("gru-hard2", "bf16"), ("gru-before-hard2", "tf32"), ("gru-before-hard3", "bf16")]


@pytest.mark.parametrize("act,label", GRU, ids=[f"{a}-{l}" for a, l in GRU])
def test_gru_hard_sigmoids_through_the_family_op(kind, act, label):
    """The GRU op is sigmoid-only; a Keras GRU's hard sigmoids run the same kernels
    through the family op, whose backward reads h_prev from the output (or hx)."""
    check(kind, label, act, RnnProblem(T=4, B=18, H=20, D=2, seed=31))


def test_rnn_f16_no_mask_no_lengths(kind):
    check(kind, "f16", "tanh", RnnProblem(T=4, B=3, H=40, mask=False, lengths=False, seed=3))


@pytest.mark.parametrize("label", ["tf32", "bf16"])
def test_rnn_h100_pads_to_128(kind, label):
    check(kind, label, "tanh", RnnProblem(T=3, B=5, I=3, H=100, D=1, seed=7))


def test_rnn_h256_on_a_cluster_of_two(kind):
    """16-bit H = 200 pads to 256: on an H100 a cluster of two CTAs per 16-row tile."""
    if kind == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("clusters need sm_90")
    check(kind, "bf16", "relu", RnnProblem(T=3, B=18, I=3, H=200, D=2, seed=13), gpu="h100")


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_rnn_runs_under_both_gpus_limits(gpu):
    check("emulated", "bf16", "tanh", RnnProblem(T=3, B=18, I=3, H=100, D=2, seed=2), gpu=gpu)


def test_rnn_shuffled_thread_order_gives_the_same_bits():
    """Threads resumed in a seeded random order give bit-identical results."""
    p = RnnProblem(T=4, B=17, H=20, seed=9)
    runs = []
    for seed in (None, 1):
        with device_for("emulated", True, **({} if seed is None else {"shuffle_seed": seed})) as dev:
            runs.append(results(ops.rnn_layer, CELLS["lstm"],
                                make_args(p, torch.bfloat16, dev, CELLS["lstm"]), *cotangents(p)))
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


@pytest.mark.parametrize("act", ["tanh", "relu", "lstm", "gru-keras"])
def test_two_layer_bidirectional_module(kind, act):
    """gru_torch.RNN / LSTM / a Keras GRU with backend="fused": 2 layers, both directions,
    recurrent dropout (the same masks on both sides, from the same seed) and lengths,
    against the reference backend."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, recurrent_dropout=0.3)
    if act == "lstm":
        make = gru_torch.LSTM
    elif act == "gru-keras":  # hard sigmoid, one bias, input masks of two directions
        make = gru_torch.GRU
        kw.update(reset_after=False, recurrent_activation="hard_sigmoid_keras2", input_dropout=0.2)
    else:
        make = gru_torch.RNN
        kw["nonlinearity"] = act
    net = make(6, 20, backend="fused", **kw)
    ref = make(6, 20, backend="reference", **kw)
    ref.load_state_dict(net.state_dict())
    x = torch.randn(5, 7, 6)
    lengths = torch.tensor([7, 1, 4, 6, 2])

    def loss(out, state):
        states = state if isinstance(state, tuple) else (state,)
        return out.square().sum() + sum(s.sum() for s in states)

    with device_for(kind, True) as device:
        net.to(device)
        torch.manual_seed(1)
        xd = x.detach().clone().to(device).requires_grad_()
        out, state = net(xd, lengths=lengths)
        loss(out, state).backward()
    torch.manual_seed(1)
    xr = x.clone().requires_grad_()
    ref_out, ref_state = ref(xr, lengths=lengths)
    loss(ref_out, ref_state).backward()
    tol = 2e-2  # tf32 operands over two layers
    torch.testing.assert_close(out.detach().cpu(), ref_out.detach(), atol=tol, rtol=0)
    torch.testing.assert_close(xd.grad.cpu(), xr.grad, atol=5 * tol, rtol=0)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, atol=5 * tol, rtol=0, msg=name)


def test_rnn_without_a_persistent_plan_is_refused_by_name():
    """The RNN has the persistent kernel alone on a device: a layer it cannot run (here
    float64, which has no tensor-core path) is refused with the plan's reason."""
    with device_for("emulated", True) as device:
        p = RnnProblem(T=2, B=3, H=8, D=1)
        args = make_args(p, torch.float64, device, CELLS["tanh"])
        with pytest.raises(RuntimeError, match="persistent kernel alone.*float64"):
            results(ops.rnn_layer, CELLS["tanh"], args, *cotangents(p))


NOTEBOOK_BT = [(32, 200), (512, 200), (512, 500), (100, 300)]


@pytest.mark.parametrize("gpu", ["a100", "h100"])
@pytest.mark.parametrize("H", [32, 64, 128, 256])
def test_rnn_launches_fit_both_gpus_at_notebook_shapes(gpu, H):
    """The LSTM and RNN kernels' grid, block and shared memory for every notebook shape,
    dtype and direction count pass the emulator's launch checks for the GPU; where the
    plan has no persistent kernel (H = 256 without clusters or in tf32; the tf32 LSTM at
    HP = 128 on an A100, past its shared memory) the launch check says why."""
    seen = set()
    for (B, T), dtype, cell, D in itertools.product(
            NOTEBOOK_BT, ["float32", "bfloat16", "float16"], [2, 3, 4], [1, 2]):
        refused = (H == 256 and (dtype == "float32" or gpu == "a100")) or (
            cell == 2 and dtype == "float32" and gpu == "a100" and H == 128)
        if refused:
            with pytest.raises(ValueError, match="no CUDA path for cell .* (exceeds|shared memory)"):
                torch.ops.gru_torch._gru_launch_check(dtype, H, B, T, D, cell, True, gpu)
            continue
        seen.update(torch.ops.gru_torch._gru_launch_check(dtype, H, B, T, D, cell, True, gpu))
    kinds = {line.split()[0] for line in seen}
    if H == 256 and gpu == "a100":
        assert kinds == set()
    else:
        assert kinds == {"rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward"}, seen


def test_the_family_op_runs_the_emulated_kernels():
    """Under the emulator an RNN layer reaches the emulated CUDA kernels (the emulator
    counts their barriers), not the CPU family op."""
    p = RnnProblem(T=3, B=4, H=20, D=1)
    with device_for("emulated", True) as device:
        results(ops.rnn_layer, CELLS["lstm"], make_args(p, torch.bfloat16, device, CELLS["lstm"]),
                *cotangents(p))
        seconds, switches, barriers, *_ = torch.ops.gru_torch._emu_last_stats()
    assert barriers > 0 and switches > 0


@pytest.mark.parametrize("act", ["relu", "lstm"])
def test_opcheck_family_layer_emulated(act):
    """family_layer_emulated keeps family_layer's schema, fake kernel and autograd
    registration (torch.library.opcheck)."""
    cell = CELLS[act]
    p = RnnProblem(T=3, B=4, H=8, D=2)
    with device_for("emulated", True) as device:
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, mask, lengths = make_args(p, torch.bfloat16, device, cell)
        gx = torch.randn(p.T, p.B, p.D, cell.gates * p.H, dtype=torch.bfloat16)
        ops._register_family()
        args = [t.requires_grad_() if t is not None else None for t in (gx, hx, cx, w_hh)]
        torch.library.opcheck(torch.ops.gru_torch.family_layer_emulated.default,
                              (*args, None, mask, lengths, ops.cell_code(cell), 0, True))


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_the_python_plan_agrees_with_the_ops(gpu):
    """gru_torch.device_plan, which backend="auto" asks before a call, says a layer has
    no persistent kernel exactly where csrc/device/gru_plan.h (the op's own choice) says
    so: every cell, dtype, TF32 setting and size from 2 to 260."""
    from gru_torch import device_plan

    sm, smem = device_plan.EMULATED_GPUS[gpu]
    for cell, dtype, tf32, H in itertools.product(
            range(5), ["float32", "float64", "bfloat16", "float16"], [True, False],
            list(range(2, 261, 2)) + [7, 33, 129, 255]):
        why = device_plan.persistent_reason(cell, getattr(torch, dtype), H, sm, smem, tf32)
        try:
            lines = torch.ops.gru_torch._gru_launch_check(dtype, H, 16, 4, 1, cell, tf32, gpu)
            persistent = any("forward" in line.split()[0] for line in lines)
        except (ValueError, RuntimeError) as e:
            assert "no CUDA path" in str(e), e
            persistent = False
        assert (why is None) == persistent, (cell, dtype, tf32, H, why, gpu)


def test_auto_falls_back_where_the_kernels_cannot_run():
    """On the (emulated) GPU, a hard-sigmoid LSTM in float64, which cuDNN cannot compute
    and the persistent kernels cannot run, takes the reference loop under backend="auto"
    rather than failing; backend="fused" names why it cannot."""
    with device_for("emulated", True) as device:
        lstm = gru_torch.LSTM(4, 6, recurrent_activation="hard_sigmoid_keras2").double()
        ref = gru_torch.LSTM(4, 6, recurrent_activation="hard_sigmoid_keras2",
                             backend="reference").double()
        ref.load_state_dict(lstm.state_dict())
        x = torch.randn(3, 2, 4, dtype=torch.float64, device=device)
        with pytest.warns(UserWarning, match="reference loop.*float64 has no tensor-core path"):
            out, _ = lstm(x)
        torch.testing.assert_close(out, ref(x)[0])
        fused = gru_torch.LSTM(4, 6, recurrent_activation="hard_sigmoid_keras2",
                               backend="fused").double()
        with pytest.raises(RuntimeError, match="persistent CUDA kernels alone.*float64"):
            fused(x)
