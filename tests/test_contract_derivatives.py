"""Derivatives contract: first, second and third derivatives of gru_torch's layers and
cells equal nn.GRU's, nn.LSTM's (with and without proj_size) and nn.RNN's (tanh and relu)
and their cells' (float64, every backend), and gradcheck / gradgradcheck pass on every
backend, every cell, with recurrent dropout, lengths, two directions and two layers. The
GRU runs every combination; the other families, smaller and sampled ones."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import gru_torch
from conftest import available_backends, keras_capable_backends
from contract import (CELLS, GRU, GRU_CELL, LAYER_CELL, LAYERS, OTHER_LAYERS, assert_same_values,
                      backend_param, family_backends)

T, B, I, H = 4, 3, 2, 3
DT = torch.float64
ATOL = 1e-10


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed):
    return torch.randn(*shape, dtype=DT, generator=_seeded(seed))


def _pair(fam, num_layers, bidirectional, bias, backend, batch_first=False, seed=0):
    return fam.pair(I, H, num_layers, bias=bias, batch_first=batch_first,
                    bidirectional=bidirectional, dtype=DT, backend=backend, seed=seed)


def _state(fam, layers, batch, seed):
    """hx: [layers, *batch, P], and an LSTM's c [layers, *batch, H] beside it."""
    return fam.state(lambda w: _randn(layers, *batch, w, seed=seed + w), H)


def _leaves(state):
    return list(state) if isinstance(state, (tuple, list)) else [state]


def _first_and_second(module, x, hx, form, seed):
    """Loss = a fixed random functional of (output, h_n[, c_n]) that is not linear in
    them (so the incoming gradients depend on the outputs, as in a gradient penalty);
    returns the first derivatives w.r.t. input, hx and every parameter, and the second
    derivatives of a fixed random combination of those."""
    x = x.clone().requires_grad_()
    states = [t.clone().requires_grad_() for t in _leaves(hx)]
    arg = x
    if form == "packed":
        arg = pack_padded_sequence(x, torch.tensor([4, 2, 3]), enforce_sorted=False)
    out, hidden = module(arg, tuple(states) if len(states) > 1 else states[0])
    out = out.data if form == "packed" else out
    loss = (torch.tanh(out) * _randn(*out.shape, seed=seed)).sum() + sum(
        (f ** 2).sum() for f in _leaves(hidden))
    targets = [x] + states + list(module.parameters())
    first = torch.autograd.grad(loss, targets, create_graph=True)
    combo = sum((g * _randn(*g.shape, seed=seed + 1 + i)).sum() for i, g in enumerate(first))
    second = torch.autograd.grad(combo, targets)
    return [g.detach() for g in first], list(second)


# (num_layers, bidirectional, bias, form) the other families run, per backend: on the
# reference each flag both ways and every form; nn's path through gru_torch's packing and
# unbatching; "auto" (nn's kernel after the fused op declines) once
SAMPLED = {"reference": [(2, True, True, "packed"), (1, False, False, "unbatched"),
                         (1, True, False, "batched")],
           "cudnn": [(2, True, False, "packed"), (1, False, True, "unbatched")],
           "auto": [(1, True, True, "batched")]}


def _layer_combos() -> list:
    """(family, backend, num_layers, bidirectional, bias, form): every combination for the
    GRU, SAMPLED for the others."""
    combos = [(GRU, *c) for c in itertools.product(
        available_backends(), [1, 2], [False, True], [True, False],
        ["batched", "unbatched", "packed"])]
    combos += [(f, b, *shape) for f in OTHER_LAYERS for b, shapes in SAMPLED.items()
               for shape in shapes]
    return [backend_param(f, b, f, b, L, d, bs, form,
                          id=f"{f}-{b}-L{L}-{'bi' if d else 'uni'}-"
                             f"{'bias' if bs else 'nobias'}-{form}")
            for f, b, L, d, bs, form in combos]


@pytest.mark.parametrize("fam,backend,num_layers,bidirectional,bias,form", _layer_combos())
def test_first_and_second_derivatives_match_nn(fam, backend, num_layers, bidirectional, bias,
                                               form):
    theirs, ours = _pair(fam, num_layers, bidirectional, bias, backend)
    D = 2 if bidirectional else 1
    x = _randn(T, I, seed=1) if form == "unbatched" else _randn(T, B, I, seed=1)
    hx = _state(fam, num_layers * D, () if form == "unbatched" else (B,), seed=2)
    first_t, second_t = _first_and_second(theirs, x, hx, form, seed=3)
    first_o, second_o = _first_and_second(ours, x, hx, form, seed=3)
    assert_same_values(first_t, first_o, "first derivatives", atol=ATOL)
    assert_same_values(second_t, second_o, "second derivatives", atol=ATOL)
    n_leaves = 1 + len(_leaves(hx))
    assert all(s.abs().sum() > 0 for s in second_t[:n_leaves]), "trivial second derivative"


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_gradient_penalty_and_hessian_vector_product_match_nn(fam, backend):
    """The uses the issue names: a gradient penalty on the parameters' gradients, and a
    Hessian-vector product through torch.autograd.functional.hvp."""
    theirs, ours = _pair(fam, 2, True, True, backend)
    x = _randn(T, B, I, seed=4)

    def penalty_grads(m):
        out, hidden = m(x)
        grads = torch.autograd.grad(out.square().mean() + _leaves(hidden)[0].sum(),
                                    list(m.parameters()), create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return torch.autograd.grad(penalty, list(m.parameters()))

    assert_same_values(penalty_grads(theirs), penalty_grads(ours), "penalty", atol=ATOL)

    def hvp(m):
        def f(inp):
            out, hidden = m(inp)
            return (out ** 3).sum() + sum(h.sum() for h in _leaves(hidden))
        return torch.autograd.functional.hvp(f, x, _randn(T, B, I, seed=5))

    assert_same_values(hvp(theirs), hvp(ours), "hvp", atol=ATOL)


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_third_derivative_matches_nn(fam, backend):
    theirs, ours = _pair(fam, 1, True, True, backend)
    x0 = _randn(T, B, I, seed=6)

    def third(m):
        x = x0.clone().requires_grad_()
        out, hidden = m(x)
        loss = (out ** 2).sum() + sum((h ** 3).sum() for h in _leaves(hidden))
        (g1,) = torch.autograd.grad(loss, x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 ** 2).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad((g2 ** 2).sum(), x)
        return g3

    assert_same_values(third(theirs), third(ours), "third derivative", atol=ATOL)


@pytest.mark.parametrize("needs", ["input", "params"])
@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_double_backward_with_partial_requires_grad(fam, backend, needs):
    theirs, ours = _pair(fam, 1, False, True, backend)
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
    n = len(args)

    def fn(*tensors):
        torch.manual_seed(seed)
        first = tuple(tensors[1:3]) if n == 3 else (tensors[1] if n == 2 else None)
        out = module(tensors[0], *(() if first is None else (first,)), **kwargs)
        flat = []
        for o in (out if isinstance(out, tuple) else (out,)):
            flat += _leaves(o)
        return tuple(flat)

    return check(fn, tuple(args) + params, eps=1e-6, atol=1e-6, fast_mode=True)


GRU_CHECKS = [(GRU, b, {"reset_after": ra}, rd, lengths) for b in available_backends()
              for ra in (True, False) for rd in (0.0, 0.5) for lengths in (False, True)
              if (ra and rd == 0.0) or b in keras_capable_backends()]
# the others: nn's path without dropout, the reference with and without it, one of them
# with lengths; LSTMs with per-gate masks
OTHER_CHECKS = [(f, b, {}, rd, lengths) for f in OTHER_LAYERS
                for b, rd, lengths in (("cudnn", 0.0, True), ("reference", 0.0, False),
                                       ("reference", 0.5, True))]
OTHER_CHECKS.append((LAYERS[1], "reference", {"dropout_masks": "per_gate"}, 0.5, False))


@pytest.mark.parametrize("fam,backend,extra,recurrent_dropout,lengths", [
    pytest.param(*c, id=f"{c[0]}-{c[1]}-{'-'.join(f'{k}{v}' for k, v in c[2].items()) or 'nn'}-"
                        f"rd{c[3]}-{'lengths' if c[4] else 'full'}")
    for c in GRU_CHECKS + OTHER_CHECKS])
def test_gradcheck_and_gradgradcheck(fam, backend, extra, recurrent_dropout, lengths):
    torch.manual_seed(8)
    small = fam is not GRU  # the GRU's two layers and directions, a smaller cell elsewhere
    module = fam.ours_cls(I, 3 if fam.proj_size else 2, num_layers=1 if small else 2,
                          bidirectional=True, dtype=DT, recurrent_dropout=recurrent_dropout,
                          backend=backend, **fam.kw, **extra)
    D = module.num_layers * 2
    x = _randn(3, 2, I, seed=9).requires_grad_()
    hx = [t.requires_grad_() for t in _leaves(
        fam.state(lambda w: _randn(D, 2, w, seed=10 + w), module.hidden_size))]
    kwargs = {"lengths": torch.tensor([3, 2])} if lengths else {}
    assert _module_check(gradcheck, module, (x, *hx), kwargs)
    assert _module_check(gradgradcheck, module, (x, *hx), kwargs)


CELL_CHECKS = [(GRU_CELL, b, {"reset_after": ra}, rd) for b in available_backends()
               for ra in (True, False) for rd in (0.0, 0.5)
               if (ra and rd == 0.0) or b in keras_capable_backends()]
CELL_CHECKS += [(f, b, {}, rd) for f in CELLS[1:]
                for b, rd in (("cudnn", 0.0), ("reference", 0.0), ("reference", 0.5))]


@pytest.mark.parametrize("fam,backend,extra,recurrent_dropout", [
    pytest.param(*c, id=f"{c[0]}-{c[1]}-{'-'.join(f'{k}{v}' for k, v in c[2].items()) or 'nn'}-"
                        f"rd{c[3]}")
    for c in CELL_CHECKS])
def test_cell_gradcheck_and_gradgradcheck(fam, backend, extra, recurrent_dropout):
    torch.manual_seed(11)
    cell = fam.ours_cls(I, H, dtype=DT, recurrent_dropout=recurrent_dropout, backend=backend,
                        **fam.kw, **extra)
    x = _randn(B, I, seed=12).requires_grad_()
    hx = [t.requires_grad_() for t in _leaves(fam.state(lambda w: _randn(B, w, seed=13), H))]
    assert _module_check(gradcheck, cell, (x, *hx))
    assert _module_check(gradgradcheck, cell, (x, *hx))


CELL_COMBOS = [(f, b, bias, batched) for f in CELLS for b in f.backends()
               for bias, batched in itertools.product([True, False], [True, False])
               if f is GRU_CELL or b != "auto" or (bias and batched)]


@pytest.mark.parametrize("fam,backend,bias,batched", [
    backend_param(f, b, f, b, bs, bt,
                  id=f"{f}-{b}-{'bias' if bs else 'nobias'}-{'batched' if bt else 'unbatched'}")
    for f, b, bs, bt in CELL_COMBOS])
def test_cell_first_and_second_derivatives_match_nn(fam, backend, bias, batched):
    theirs, ours = fam.pair(I, H, bias=bias, dtype=DT, backend=backend, seed=14)
    shape = (B,) if batched else ()
    results = []
    for m in (theirs, ours):
        x = _randn(*shape, I, seed=15).requires_grad_()
        states = [t.requires_grad_() for t in _leaves(
            fam.state(lambda w: _randn(*shape, w, seed=16), H))]
        hx = tuple(states) if fam.has_c else states[0]
        out = m(x, m(x, hx))  # two steps, so the state's second derivative is not trivial
        out = out[0] if fam.has_c else out
        targets = [x] + states + list(m.parameters())
        first = torch.autograd.grad((torch.tanh(out) * _randn(*out.shape, seed=17)).sum(),
                                    targets, create_graph=True)
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
def _func_params() -> list:
    """(family, backend): "auto", "reference" and "cudnn" for each family."""
    return [backend_param(f, b, f, b, id=f"{f}-{b}") for f in LAYERS
            for b in ("auto", "reference", "cudnn")]


@pytest.mark.filterwarnings("ignore:gru_torch. running the reference loop")
@pytest.mark.filterwarnings("ignore:.*torch.jit.script. is deprecated:FutureWarning")
@pytest.mark.parametrize("fam,backend", _func_params())
def test_torch_func_transforms_like_nn(fam, backend, clear_warned):
    """torch.func's grad, hessian, jacrev and jacfwd, and forward-mode AD, as used for
    meta-learning: "auto" runs them through the reference loop (the compiled op's
    torch.library autograd does not support them), with nn's results."""
    theirs, ours = _pair(fam, 1, True, True, backend)
    x = _randn(T, B, I, seed=19)

    def loss(m):
        def f(inp):
            out, hidden = m(inp)
            return (out ** 2).sum() + sum(h.sum() for h in _leaves(hidden))
        return f

    def final_state(m):
        return lambda inp: _leaves(m(inp)[1])[-1]  # h_n, or an LSTM's c_n

    for transform in (torch.func.grad, torch.func.hessian):
        assert_same_values(transform(loss(theirs))(x), transform(loss(ours))(x),
                           transform.__name__, atol=ATOL)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        assert_same_values(transform(final_state(theirs))(x), transform(final_state(ours))(x),
                           transform.__name__, atol=ATOL)
    tangent = _randn(T, B, I, seed=20)
    with torch.autograd.forward_ad.dual_level():
        duals = [m(torch.autograd.forward_ad.make_dual(x, tangent)) for m in (theirs, ours)]
        tangents = [[torch.autograd.forward_ad.unpack_dual(t).tangent
                     for t in [d[0]] + _leaves(d[1])] for d in duals]
    assert_same_values(tangents[0], tangents[1], "forward-mode tangents", atol=ATOL)
    cell_t, cell_o = LAYER_CELL[fam].pair(I, H, dtype=DT, backend=backend)
    hx = LAYER_CELL[fam].state(lambda w: _randn(B, w, seed=21), H)
    step_sum = lambda cell: lambda inp: sum(h.sum() for h in _leaves(cell(inp, hx)))  # noqa: E731
    assert_same_values(torch.func.grad(step_sum(cell_t))(x[0]),
                       torch.func.grad(step_sum(cell_o))(x[0]), "cell grad", atol=ATOL)


@pytest.mark.filterwarnings("ignore:gru_torch. running the reference loop")
@pytest.mark.parametrize("fam,backend", [
    backend_param(f, b, f, b, id=f"{f}-{b}") for f in LAYERS
    for b in [b for b in available_backends() if b != "cudnn" and (f.fused or b != "fused")]
    + ["auto"]])
def test_vmap_equals_a_loop_over_samples(fam, backend):
    """nn's layers have no vmap rule at all; gru_torch's under vmap equal nn's run on
    each sample."""
    theirs, ours = _pair(fam, 2, True, True, backend)
    xs = _randn(4, T, B, I, seed=22)
    flat = lambda r: [r[0]] + _leaves(r[1])  # noqa: E731
    expected = [torch.stack(t) for t in zip(*(flat(theirs(x)) for x in xs))]
    assert_same_values(expected, flat(torch.func.vmap(ours)(xs)), "vmap", atol=ATOL)


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
