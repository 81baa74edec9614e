"""Derivatives contract: first, second and third derivatives of gru_torch.GRU and
gru_torch.GRUCell equal nn.GRU's and nn.GRUCell's (float64, every backend), and
gradcheck / gradgradcheck pass on every backend, both cells, with recurrent dropout,
lengths, two directions and two layers."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import gru_torch
from conftest import available_backends, keras_capable_backends
from contract import assert_same_values

T, B, I, H = 4, 3, 2, 3
DT = torch.float64
ATOL = 1e-10


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed):
    return torch.randn(*shape, dtype=DT, generator=_seeded(seed))


def _gru_pair(num_layers, bidirectional, bias, backend, batch_first=False, seed=0):
    torch.manual_seed(seed)
    theirs = nn.GRU(I, H, num_layers, bias=bias, batch_first=batch_first,
                    bidirectional=bidirectional, dtype=DT)
    return theirs, gru_torch.GRU.from_torch(theirs, backend=backend)


def _first_and_second(module, x, hx, form, seed):
    """Loss = a fixed random functional of (output, h_n) that is not linear in them (so
    the incoming gradients depend on the outputs, as in a gradient penalty); returns the
    first derivatives w.r.t. input, hx and every parameter, and the second derivatives
    of a fixed random combination of those."""
    x = x.clone().requires_grad_()
    leaves = [x] + ([] if hx is None else [hx.clone().requires_grad_()])
    arg = x
    if form == "packed":
        arg = pack_padded_sequence(x, torch.tensor([4, 2, 3]), enforce_sorted=False)
    out, h_n = module(arg, *leaves[1:])
    out = out.data if form == "packed" else out
    loss = (torch.tanh(out) * _randn(*out.shape, seed=seed)).sum() + (h_n ** 2).sum()
    targets = leaves + list(module.parameters())
    first = torch.autograd.grad(loss, targets, create_graph=True)
    combo = sum((g * _randn(*g.shape, seed=seed + 1 + i)).sum() for i, g in enumerate(first))
    second = torch.autograd.grad(combo, targets)
    return [g.detach() for g in first], list(second)


GRU_COMBOS = list(itertools.product(available_backends(), [1, 2], [False, True], [True, False],
                                    ["batched", "unbatched", "packed"]))


@pytest.mark.parametrize("backend,num_layers,bidirectional,bias,form", GRU_COMBOS,
                         ids=[f"{b}-L{L}-{'bi' if d else 'uni'}-{'bias' if bs else 'nobias'}-{f}"
                              for b, L, d, bs, f in GRU_COMBOS])
def test_gru_first_and_second_derivatives_match_nn(backend, num_layers, bidirectional, bias, form):
    theirs, ours = _gru_pair(num_layers, bidirectional, bias, backend)
    D = 2 if bidirectional else 1
    x = _randn(T, I, seed=1) if form == "unbatched" else _randn(T, B, I, seed=1)
    hx = _randn(num_layers * D, *(() if form == "unbatched" else (B,)), H, seed=2)
    first_t, second_t = _first_and_second(theirs, x, hx, form, seed=3)
    first_o, second_o = _first_and_second(ours, x, hx, form, seed=3)
    assert_same_values(first_t, first_o, "first derivatives", atol=ATOL)
    assert_same_values(second_t, second_o, "second derivatives", atol=ATOL)
    assert all(s.abs().sum() > 0 for s in second_t[:2]), "trivial second derivative"


@pytest.mark.parametrize("backend", available_backends())
def test_gradient_penalty_and_hessian_vector_product_match_nn(backend):
    """The uses the issue names: a gradient penalty on the parameters' gradients, and a
    Hessian-vector product through torch.autograd.functional.hvp."""
    theirs, ours = _gru_pair(2, True, True, backend)
    x = _randn(T, B, I, seed=4)

    def penalty_grads(m):
        out, h_n = m(x)
        grads = torch.autograd.grad(out.square().mean() + h_n.sum(), list(m.parameters()),
                                    create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return torch.autograd.grad(penalty, list(m.parameters()))

    assert_same_values(penalty_grads(theirs), penalty_grads(ours), "penalty", atol=ATOL)

    def hvp(m):
        def f(inp):
            out, h_n = m(inp)
            return (out ** 3).sum() + h_n.sum()
        return torch.autograd.functional.hvp(f, x, _randn(T, B, I, seed=5))

    assert_same_values(hvp(theirs), hvp(ours), "hvp", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
def test_third_derivative_matches_nn(backend):
    theirs, ours = _gru_pair(1, True, True, backend)
    x0 = _randn(T, B, I, seed=6)

    def third(m):
        x = x0.clone().requires_grad_()
        out, h_n = m(x)
        (g1,) = torch.autograd.grad((out ** 2).sum() + (h_n ** 3).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 ** 2).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad((g2 ** 2).sum(), x)
        return g3

    assert_same_values(third(theirs), third(ours), "third derivative", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("needs", ["input", "params"])
def test_double_backward_with_partial_requires_grad(backend, needs):
    theirs, ours = _gru_pair(1, False, True, backend)
    results = []
    for m in (theirs, ours):
        m.requires_grad_(needs == "params")
        x = _randn(T, B, I, seed=7).requires_grad_(needs == "input")
        targets = [x] if needs == "input" else list(m.parameters())
        out, _ = m(x)
        first = torch.autograd.grad(out.square().sum(), targets, create_graph=True)
        results.append(torch.autograd.grad(sum(g.square().sum() for g in first), targets))
    assert_same_values(results[0], results[1], "second derivatives", atol=ATOL)


# ---------------------------------------------------------------- gradcheck, gradgradcheck
def _module_check(check, module, args, kwargs=None, seed=0):
    """check(fn, inputs + parameters); fn reseeds so recurrent dropout draws the same
    masks on every evaluation. Fast mode compares random projections of the analytic and
    numerical Jacobians (the full ones take minutes at these parameter counts); the op's
    own checks below and in test_ops.py compare them whole."""
    kwargs = kwargs or {}
    params = tuple(module.parameters())

    def fn(*tensors):
        torch.manual_seed(seed)
        out = module(*tensors[:len(args)], **kwargs)
        return tuple(o for o in (out if isinstance(out, tuple) else (out,)))

    return check(fn, tuple(args) + params, eps=1e-6, atol=1e-6, fast_mode=True)


GRU_CHECKS = [(b, ra, rd, lengths) for b in available_backends() for ra in (True, False)
              for rd in (0.0, 0.5) for lengths in (False, True)
              if (ra and rd == 0.0) or b in keras_capable_backends()]


@pytest.mark.parametrize("backend,reset_after,recurrent_dropout,lengths", GRU_CHECKS,
                         ids=[f"{b}-ra{ra}-rd{rd}-{'lengths' if ln else 'full'}"
                              for b, ra, rd, ln in GRU_CHECKS])
def test_gru_gradcheck_and_gradgradcheck(backend, reset_after, recurrent_dropout, lengths):
    torch.manual_seed(8)
    module = gru_torch.GRU(I, 2, num_layers=2, bidirectional=True, dtype=DT,
                           reset_after=reset_after, recurrent_dropout=recurrent_dropout,
                           backend=backend)
    x = _randn(3, 2, I, seed=9).requires_grad_()
    hx = _randn(4, 2, 2, seed=10).requires_grad_()
    kwargs = {"lengths": torch.tensor([3, 2])} if lengths else {}
    assert _module_check(gradcheck, module, (x, hx), kwargs)
    assert _module_check(gradgradcheck, module, (x, hx), kwargs)


CELL_CHECKS = [(b, ra, rd) for b in available_backends() for ra in (True, False)
               for rd in (0.0, 0.5) if (ra and rd == 0.0) or b in keras_capable_backends()]


@pytest.mark.parametrize("backend,reset_after,recurrent_dropout", CELL_CHECKS,
                         ids=[f"{b}-ra{ra}-rd{rd}" for b, ra, rd in CELL_CHECKS])
def test_gru_cell_gradcheck_and_gradgradcheck(backend, reset_after, recurrent_dropout):
    torch.manual_seed(11)
    cell = gru_torch.GRUCell(I, H, dtype=DT, reset_after=reset_after,
                             recurrent_dropout=recurrent_dropout, backend=backend)
    x = _randn(B, I, seed=12).requires_grad_()
    hx = _randn(B, H, seed=13).requires_grad_()
    assert _module_check(gradcheck, cell, (x, hx))
    assert _module_check(gradgradcheck, cell, (x, hx))


CELL_COMBOS = list(itertools.product(available_backends(), [True, False], [True, False]))


@pytest.mark.parametrize("backend,bias,batched", CELL_COMBOS,
                         ids=[f"{b}-{'bias' if bs else 'nobias'}-{'batched' if bt else 'unbatched'}"
                              for b, bs, bt in CELL_COMBOS])
def test_gru_cell_first_and_second_derivatives_match_nn(backend, bias, batched):
    torch.manual_seed(14)
    theirs = nn.GRUCell(I, H, bias=bias, dtype=DT)
    ours = gru_torch.GRUCell.from_torch(theirs, backend=backend)
    shape = (B,) if batched else ()
    results = []
    for m in (theirs, ours):
        x = _randn(*shape, I, seed=15).requires_grad_()
        hx = _randn(*shape, H, seed=16).requires_grad_()
        h = m(x, m(x, hx))  # two steps, so the state's second derivative is not trivial
        targets = [x, hx] + list(m.parameters())
        first = torch.autograd.grad((torch.tanh(h) * _randn(*h.shape, seed=17)).sum(), targets,
                                    create_graph=True)
        combo = sum((g * _randn(*g.shape, seed=18 + i)).sum() for i, g in enumerate(first))
        results.append(([g.detach() for g in first], list(torch.autograd.grad(combo, targets))))
    assert_same_values(results[0], results[1], "cell derivatives", atol=ATOL)


# ---------------------------------------------------------------- the op itself
OP_CASES = list(itertools.product([True, False], [1, 2], [False, True], [False, True]))


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="gru_torch extension not built")
@pytest.mark.parametrize("reset_after,D,mask,lengths", OP_CASES,
                         ids=[f"ra{ra}-D{D}-mask{m}-lengths{ln}" for ra, D, m, ln in OP_CASES])
def test_fused_op_gradgradcheck(reset_after, D, mask, lengths):
    from gru_torch import ops
    from test_ops import make_args
    args = make_args(T=3, B=2, I=2, H=2, D=D, reset_after=reset_after, mask=mask,
                     lengths=lengths)
    assert gradgradcheck(lambda *a: ops.gru_layer(*a), args, eps=1e-6, atol=1e-6)


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="gru_torch extension not built")
def test_double_backward_under_torch_compile_raises():
    """AOTAutograd compiles a once-differentiable backward, so double backward through a
    compiled gru_torch.GRU raises (torch's own error) rather than returning a wrong
    derivative. (A compiled nn.GRU runs eagerly: dynamo does not trace RNN modules.)"""
    gru = gru_torch.GRU(3, 4, backend="fused")
    x = torch.randn(5, 2, 3, requires_grad=True)

    def loss_fn(inp):
        out, h_n = gru(inp)
        return out.square().mean() + h_n.sum()

    loss_fn(x)  # registers the op's autograd before dynamo traces it
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x), [x] + list(gru.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(sum(g.square().sum() for g in grads[1:]), list(gru.parameters()))


# ---------------------------------------------------------------- torch.func, forward AD
@pytest.mark.filterwarnings("ignore:gru_torch. running the reference loop")
@pytest.mark.filterwarnings("ignore:.*torch.jit.script. is deprecated:FutureWarning")
@pytest.mark.parametrize("backend", ["auto", "reference", "cudnn"])
def test_torch_func_transforms_like_nn(backend, clear_warned):
    """torch.func's grad, hessian, jacrev and jacfwd, and forward-mode AD, as used for
    meta-learning: "auto" runs them through the reference loop (the compiled op's
    torch.library autograd does not support them), with nn.GRU's results."""
    theirs, ours = _gru_pair(1, True, True, backend)
    x = _randn(T, B, I, seed=19)

    def loss(m):
        def f(inp):
            out, h_n = m(inp)
            return (out ** 2).sum() + h_n.sum()
        return f

    for transform in (torch.func.grad, torch.func.hessian):
        assert_same_values(transform(loss(theirs))(x), transform(loss(ours))(x),
                           transform.__name__, atol=ATOL)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        assert_same_values(transform(lambda inp: theirs(inp)[1])(x),
                           transform(lambda inp: ours(inp)[1])(x), transform.__name__, atol=ATOL)
    tangent = _randn(T, B, I, seed=20)
    with torch.autograd.forward_ad.dual_level():
        duals = [m(torch.autograd.forward_ad.make_dual(x, tangent)) for m in (theirs, ours)]
        tangents = [[torch.autograd.forward_ad.unpack_dual(t).tangent for t in d] for d in duals]
    assert_same_values(tangents[0], tangents[1], "forward-mode tangents", atol=ATOL)
    cell_t = nn.GRUCell(I, H, dtype=DT)
    cell_o = gru_torch.GRUCell.from_torch(cell_t, backend=backend)
    hx = _randn(B, H, seed=21)
    assert_same_values(torch.func.grad(lambda inp: cell_t(inp, hx).sum())(x[0]),
                       torch.func.grad(lambda inp: cell_o(inp, hx).sum())(x[0]), "cell grad",
                       atol=ATOL)


@pytest.mark.filterwarnings("ignore:gru_torch. running the reference loop")
@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "cudnn"] + ["auto"])
def test_vmap_equals_a_loop_over_samples(backend):
    """nn.GRU has no vmap rule at all; gru_torch.GRU under vmap equals nn.GRU run on
    each sample."""
    theirs, ours = _gru_pair(2, True, True, backend)
    xs = _randn(4, T, B, I, seed=22)
    expected = [torch.stack(t) for t in zip(*(theirs(x) for x in xs))]
    assert_same_values(expected, list(torch.func.vmap(ours)(xs)), "vmap", atol=ATOL)


@pytest.mark.skipif("fused" not in available_backends(), reason="gru_torch extension not built")
def test_forced_fused_backend_says_it_cannot_run_under_torch_func():
    ours = gru_torch.GRU(I, H, dtype=DT, backend="fused")
    x = _randn(T, B, I, seed=23)
    with pytest.raises(RuntimeError, match="torch.func transform"):
        torch.func.grad(lambda inp: ours(inp)[0].sum())(x)
    with torch.autograd.forward_ad.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        ours(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)))
    # functionalize takes no derivatives: the op runs under it
    assert_same_values(ours(x), torch.func.functionalize(ours)(x), "functionalize", atol=0)
