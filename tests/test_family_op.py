"""The family op on the CPU (csrc/cpu/family_layer.cpp, gru_torch.ops.family_layer): every
cell, gate function, direction, mask layout and lengths, against the reference loop in
float64 and against torch.nn in float32; its derivatives, its registration, its errors."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import gru_torch
from gru_torch import backends, ops
from gru_torch.cellspec import Cell
from gru_torch.reference import family_layer_reference, rnn_layer_reference
from conftest import assert_close

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="the fused extension is not loaded")

T, B, I, H = 5, 11, 4, 6
DT = torch.float64

CELLS = ([Cell("gru", ra, recurrent_activation=g) for ra in (True, False)
          for g in ("sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3")]
         + [Cell("lstm", recurrent_activation=g)
            for g in ("sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3")]
         + [Cell("rnn"), Cell("rnn", activation="relu")])


def _layer_args(cell: Cell, D: int, masks: str | None, lengths: bool, input_masks: bool,
                dtype=DT, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    G = cell.gates * H
    M = 0 if masks is None else (1 if masks == "shared" else cell.gates)
    two_biases = not (cell.kind == "gru" and not cell.reset_after)

    def mask(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) > 0.3).to(dtype) / 0.7

    return (cell, rand(T, B, I), rand(D, B, H), rand(D, B, H) if cell.has_c else None,
            rand(D, G, I, scale=0.5), rand(D, G, H, scale=0.5), rand(D, G),
            rand(D, G) if two_biases else None, None,
            mask(D, B, max(M, 1), I) if input_masks else None,
            mask(D, B, M, H) if M else None,
            torch.randint(1, T + 1, (B,), generator=g) if lengths else None)


def _outputs_and_grads(fn, args, seed=1):
    out, h_n, c_n = fn(*args)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() \
        + (h_n * torch.randn(h_n.shape, generator=g, dtype=out.dtype)).sum()
    if c_n is not None:
        loss = loss + (c_n ** 2).sum()
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return (out, h_n, c_n), torch.autograd.grad(loss, leaves)


def _uses_family_op(cell, masks, input_masks, D):
    return ops.gru_op_reason(cell, masks is not None or input_masks, masks or "shared",
                             input_masks, D) is not None


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.describe())
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("masks", [None, "shared", "per_gate"])
@pytest.mark.parametrize("lengths", [False, True])
def test_matches_the_reference_loop(cell, D, masks, lengths):
    """Outputs, final states and every gradient (input, hx, cx, weights, biases) equal the
    reference loop's in float64, with input and recurrent masks of either layout."""
    args = _layer_args(cell, D, masks, lengths, input_masks=masks is not None)
    (out, h_n, c_n), grads = _outputs_and_grads(ops.rnn_layer, args)
    (r_out, r_h, r_c), r_grads = _outputs_and_grads(rnn_layer_reference, args)
    assert_close(out, r_out, atol=1e-12, what="output")
    assert_close(h_n, r_h, atol=1e-12, what="h_n")
    if cell.has_c:
        assert_close(c_n, r_c, atol=1e-12, what="c_n")
    for a, b in zip(grads, r_grads):
        assert_close(a, b, atol=1e-10, what="gradient")


def test_the_family_op_runs_what_the_gru_op_cannot():
    """The cases above reach the family op wherever the GRU op cannot compute them."""
    assert _uses_family_op(Cell("lstm"), None, False, 1)
    assert _uses_family_op(Cell("rnn"), None, False, 1)
    assert _uses_family_op(Cell("gru", recurrent_activation="hard_sigmoid_keras2"), None, False, 1)
    assert _uses_family_op(Cell("gru"), "per_gate", False, 1)
    assert _uses_family_op(Cell("gru"), "shared", True, 2)
    assert not _uses_family_op(Cell("gru"), "shared", True, 1)
    calls = []
    real = torch.ops.gru_torch.family_layer

    class Spy:
        def __call__(self, *a):
            calls.append(a[7])
            return real(*a)

    args = _layer_args(Cell("lstm"), 1, None, False, False)
    try:
        torch.ops.gru_torch.family_layer = Spy()
        ops.rnn_layer(*args)
    finally:
        torch.ops.gru_torch.family_layer = real
    assert calls == [2]  # the LSTM's cell code


@pytest.mark.parametrize("kind,extra", [("lstm", {}), ("rnn", {"nonlinearity": "tanh"}),
                                        ("rnn", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_matches_torch_nn(kind, extra, bidirectional):
    """gru_torch.LSTM / RNN on the family op in float32 against nn.LSTM / nn.RNN with the
    same weights: outputs, states and gradients, with lengths (packed on nn's side)."""
    torch.manual_seed(0)
    cls, mine = (nn.LSTM, gru_torch.LSTM) if kind == "lstm" else (nn.RNN, gru_torch.RNN)
    ref = cls(I, H, num_layers=2, bidirectional=bidirectional, **extra)
    fused = mine.from_torch(ref, backend="fused")
    x = torch.randn(T, B, I, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,))
    out, hidden = fused(x, lengths=lengths)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    r_packed, r_hidden = ref(packed)
    r_out, _ = nn.utils.rnn.pad_packed_sequence(r_packed, total_length=T)
    states, r_states = (hidden, r_hidden) if kind == "lstm" else ((hidden,), (r_hidden,))
    assert_close(out, r_out, atol=2e-6, rtol=1e-5, what="output")
    for s, r in zip(states, r_states):
        assert_close(s, r, atol=2e-6, rtol=1e-5, what="state")
    loss = out.square().sum() + sum(s.sum() for s in states)
    r_loss = r_out.square().sum() + sum(s.sum() for s in r_states)
    params = [x, *fused.parameters()]
    grads = torch.autograd.grad(loss, params)
    r_grads = torch.autograd.grad(r_loss, [x, *ref.parameters()])
    for a, b in zip(grads, r_grads):
        assert_close(a, b, atol=2e-5, rtol=1e-4, what="gradient")


def _op_inputs(code: int, gate: int, D=2, M=1, lengths=True, dtype=DT, Tn=4, Bn=3, Hn=3):
    cell = ops._family_cell(code, gate)
    g = torch.Generator().manual_seed(code * 10 + gate)
    G = cell.gates * Hn
    gx = torch.randn(Tn, Bn, D, G, generator=g, dtype=dtype, requires_grad=True)
    hx = torch.randn(D, Bn, Hn, generator=g, dtype=dtype, requires_grad=True)
    cx = torch.randn(D, Bn, Hn, generator=g, dtype=dtype, requires_grad=True) if cell.has_c else None
    w_hh = (torch.randn(D, G, Hn, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b_hn = torch.randn(D, Hn, generator=g, dtype=dtype, requires_grad=True) if code == 0 else None
    Mn = 1 if M == 1 else cell.gates
    mask = (torch.rand(D, Bn, Mn, Hn, generator=g, dtype=dtype) > 0.3).to(dtype) / 0.7 if M else None
    lens = torch.tensor([Tn, 1, Tn - 1][:Bn]) if lengths else None
    return cell, (gx, hx, cx, w_hh, b_hn, mask, lens)


CODES = [(0, 0), (0, 1), (1, 2), (1, 0), (2, 0), (2, 1), (3, 0), (4, 0)]


@pytest.mark.parametrize("code,gate", CODES)
def test_op_matches_its_reference_and_differentiates_twice(code, gate):
    """family_layer against family_layer_reference; gradcheck and gradgradcheck (the
    second derivative differentiates the reference, as the GRU op's does)."""
    cell, inputs = _op_inputs(code, gate, M=3)
    got = ops.family_layer(cell, *inputs)
    want = family_layer_reference(cell, *inputs)
    for a, b in zip(got, want):
        if b is not None:
            assert_close(a, b, atol=1e-12, what="family_layer")
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def f(*xs):
        it = iter(xs)
        args = [next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t
                for t in inputs]
        out, h_n, c_n = ops.family_layer(cell, *args)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    if cell.recurrent_activation != "sigmoid" or cell.activation == "relu":
        # kinks: gradcheck's finite differences must not straddle one
        torch.manual_seed(0)
    assert torch.autograd.gradcheck(f, diff, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, diff, atol=1e-6)


@pytest.mark.parametrize("code,gate", [(0, 0), (1, 1), (2, 2), (3, 0)])
def test_opcheck(code, gate):
    ops._register_family()  # the fake kernel and autograd formula (on first use otherwise)
    cell, inputs = _op_inputs(code, gate, M=1)
    args = (*inputs, code, gate, True)
    torch.library.opcheck(torch.ops.gru_torch.family_layer, args)


def test_torch_compile_fullgraph():
    """A gru_torch.LSTM on the family op compiles without a graph break, forward and
    backward, and gives the eager values."""
    torch.manual_seed(0)
    lstm = gru_torch.LSTM(I, H, bidirectional=True, backend="fused")
    x = torch.randn(T, B, I, requires_grad=True)

    def f(x):
        out, (h, c) = lstm(x)
        return out.sum() + h.square().sum() + c.sum()

    eager = f(x)
    (g_eager,) = torch.autograd.grad(eager, [x])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    (g_compiled,) = torch.autograd.grad(compiled, [x])
    assert_close(compiled, eager, atol=1e-5, rtol=1e-5, what="loss")
    assert_close(g_compiled, g_eager, atol=1e-5, rtol=1e-5, what="input gradient")


def test_output_modified_in_place_before_backward():
    """As nn.LSTM allows: the backward reads the states from the output, and runs the
    forward again when the output changed."""
    cell, inputs = _op_inputs(2, 0, D=1, M=0, lengths=False)
    out, h_n, c_n = ops.family_layer(cell, *inputs)
    r_out, r_h, r_c = family_layer_reference(cell, *inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    loss = h_n.sum() + c_n.sum() + out[-1].sum()
    out.mul_(2.0)
    r_loss = r_h.sum() + r_c.sum() + r_out[-1].sum()
    for a, b in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(r_loss, leaves)):
        assert_close(a, b, atol=1e-12, what="gradient")


def test_expanded_output_gradient():
    """loss = out.sum() sends an expanded gradient; the op reads it without a copy."""
    cell, inputs = _op_inputs(3, 0, D=2, M=1)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    a = torch.autograd.grad(ops.family_layer(cell, *inputs)[0].sum(), leaves)
    b = torch.autograd.grad(family_layer_reference(cell, *inputs)[0].sum(), leaves)
    for x, y in zip(a, b):
        assert_close(x, y, atol=1e-12, what="gradient")


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(0, a[0][:, :, :, :-1]), "must be"),
    (lambda a: a.__setitem__(1, a[1].float()), "dtype"),
    (lambda a: a.__setitem__(2, None), "needs cx"),
    (lambda a: a.__setitem__(5, torch.ones(2, 3, 2, 3, dtype=DT)), "1 mask or one per gate"),
    (lambda a: a.__setitem__(6, torch.tensor([5, 1, 2])), r"lengths must lie in \[1, 4\]"),
    (lambda a: a.__setitem__(7, 9), "cell must be one of"),
    (lambda a: a.__setitem__(8, 3), "gate must be"),
])
def test_bad_arguments_name_what_was_wrong(mutate, match):
    _, inputs = _op_inputs(2, 0)
    args = [t.detach() if isinstance(t, torch.Tensor) else t for t in inputs] + [2, 0, False]
    mutate(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.gru_torch.family_layer(*args)


def test_bfloat16_and_cuda_get_a_reason_not_a_crash():
    """The family op computes float32 and float64 on the CPU; elsewhere the modules fall
    back, and a forced fused backend says why."""
    lstm = gru_torch.LSTM(I, H, dtype=torch.bfloat16, backend="fused")
    with pytest.raises(RuntimeError, match="float32, float64, not bfloat16"):
        lstm(torch.randn(T, B, I, dtype=torch.bfloat16))
    # on a GPU the family op's kernels take every cell and gate function with one
    # recurrent mask for every gate; per-gate masks stay on the CPU family op for now
    cuda = torch.device("cuda")
    assert ops.cell_reason(Cell("lstm"), True, "shared", False, False, 1, cuda) is None
    assert ops.cell_reason(Cell("rnn"), True, "per_gate", False, False, 2, cuda) is None
    assert ops.cell_reason(Cell("gru", recurrent_activation="hard_sigmoid_keras2"), False,
                           "shared", False, False, 1, cuda) is None
    for cell in (Cell("lstm"), Cell("gru", False)):
        why = ops.cell_reason(cell, True, "per_gate", False, False, 1, cuda)
        assert why and "GPU" in why and "per gate" in why


def test_every_preset_trains_on_the_fused_op():
    """All nine notebook models run every recurrent layer fused in training on the CPU."""
    from gru_torch import presets
    from gru_torch.rnn_base import RNNBase

    for name in presets.PRESETS:
        layers = [m for m in presets.build(name).modules() if isinstance(m, RNNBase)]
        assert layers, name
        for m in layers:
            assert backends.fused_reason(m.training_config(torch.device("cpu"))) is None, name


# ---- the forward from the input (family_layer_x), which inference runs

def _x_inputs(code: int, gate: int, D: int, M: int, bias: bool, lengths: bool, Hn: int = 7):
    """x, w_ih, bias and the rest of family_layer's arguments, M masks a row (0: none)."""
    g = torch.Generator().manual_seed(100 + code * 10 + gate + D)
    cell = ops._family_cell(code, gate)
    G = cell.gates * Hn

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=DT) * scale

    mask = (torch.rand(D, B, M, Hn, generator=g, dtype=DT) > 0.3).to(DT) / 0.7 if M else None
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    return cell, dict(x=rand(T, B, I), w_ih=rand(D, G, I, scale=0.5),
                      bias=rand(D, G) if bias else None, hx=rand(D, B, Hn),
                      cx=rand(D, B, Hn) if cell.has_c else None, w_hh=rand(D, G, Hn, scale=0.5),
                      mask=mask, lengths=lens)


X_CODES = [(2, 0), (2, 1), (2, 2), (3, 0), (4, 0)]


@pytest.mark.parametrize("code,gate", X_CODES)
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("masks", [None, "shared", "per_gate"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_forward_from_the_input_matches_the_op_on_gx(code, gate, D, masks, bias):
    """family_layer_x computes each step's input projection in its recurrent GEMM: the
    same results as family_layer on gx = x W_ih^T + bias, and as the reference loop."""
    M = {None: 0, "shared": 1, "per_gate": ops._family_cell(code, gate).gates}[masks]
    cell, a = _x_inputs(code, gate, D, M, bias, lengths=True)
    gx = torch.einsum("tbi,dgi->tbdg", a["x"], a["w_ih"])
    if bias:
        gx = gx + a["bias"]
    rest = (a["hx"], a["cx"], a["w_hh"], None, a["mask"], a["lengths"])
    got = ops.family_layer_x(cell, a["x"], a["w_ih"], a["bias"], a["hx"], a["cx"], a["w_hh"],
                             a["mask"], a["lengths"])
    on_gx = ops.family_layer(cell, gx.contiguous(), *rest)
    want = family_layer_reference(cell, gx, *rest)
    for name, x, y, z in zip(("output", "h_n", "c_n"), got, on_gx, want):
        if z is None:
            assert x is None
            continue
        assert_close(x, y, atol=1e-12, what=f"{name} against family_layer")
        assert_close(x, z, atol=1e-12, what=f"{name} against the reference")


@pytest.mark.parametrize("kind,extra", [("lstm", {}), ("rnn", {"nonlinearity": "relu"})])
def test_inference_runs_the_forward_from_the_input(kind, extra, monkeypatch):
    """Under no_grad (or with nothing requiring a gradient) the LSTM and the RNNs take
    family_layer_x, with the training forward's values; a training forward, an input
    mask or a GRU takes gx."""
    calls = []
    real = ops.family_layer_x
    monkeypatch.setattr(ops, "family_layer_x", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    cls = gru_torch.LSTM if kind == "lstm" else gru_torch.RNN
    m = cls(I, H, num_layers=2, bidirectional=True, backend="fused", **extra).double()
    x = torch.randn(T, B, I, dtype=DT)
    train_out, train_state = m(x)
    assert not calls
    with torch.no_grad():
        out, state = m(x)
    assert len(calls) == 2  # one a layer
    assert_close(out, train_out.detach(), atol=1e-12, what="output")
    for s, r in zip(state if isinstance(state, tuple) else (state,),
                    train_state if isinstance(train_state, tuple) else (train_state,)):
        assert_close(s, r.detach(), atol=1e-12, what="final state")
    m.requires_grad_(False)
    m(x)  # nothing requires a gradient
    assert len(calls) == 4
    gru_torch.GRU(I, H, backend="fused", recurrent_activation="hard_sigmoid_keras2")(x.float())
    assert len(calls) == 4


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(8, 0), "takes the LSTM and the RNNs"),
    (lambda a: a.__setitem__(0, a[0][0]), r"x must be \[T, B, I\]"),
    (lambda a: a.__setitem__(1, a[1][:, :, :-1]), r"w_ih must be \[D, G, I\] with I = x.size\(2\)"),
    (lambda a: a.__setitem__(1, a[1][:, :-1]), r"w_ih.size\(1\) must be 4 \* hidden_size"),
    (lambda a: a.__setitem__(2, a[2][:, :-1]), "bias must have shape"),
    (lambda a: a.__setitem__(3, a[3].float()), "hx has dtype Float but x has dtype Double"),
    (lambda a: a.__setitem__(0, a[0][:0]), "x has no time steps"),
])
def test_the_forward_from_the_input_names_bad_arguments(mutate, match):
    _, a = _x_inputs(2, 0, 2, 1, True, True)
    args = [a["x"], a["w_ih"], a["bias"], a["hx"], a["cx"], a["w_hh"], a["mask"], a["lengths"],
            2, 0, False]
    mutate(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.gru_torch.family_layer_x(*args)


def test_opcheck_of_the_forward_from_the_input():
    ops._register_family()
    _, a = _x_inputs(2, 1, 2, 4, True, True)
    torch.library.opcheck(torch.ops.gru_torch.family_layer_x,
                          (*a.values(), 2, 1, False))
