"""Edge cases side by side with nn.GRU, nn.LSTM (with and without proj_size), nn.RNN
(tanh and relu) and their cells: NaN and Inf in every input and weight, very long
sequences, expanded inputs, grad modes, the meta device, autocast."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gru_torch
from conftest import available_backends
from contract import (CELLS, GRU, LAYER_CELL, LAYERS, assert_same_values, backend_param,
                      family_backends, family_params)

T, B, I, H = 5, 3, 3, 4
DT = torch.float64
ATOL = 1e-10
NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
# where the non-finite value goes: the input, hx (an LSTM's h0 or c0), or one weight of
# the first layer's forward or the second layer's reverse direction
PLACES = ["input_element", "input_row", "hx", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
          "bias_hh_l0", "weight_hh_l1_reverse", "bias_hh_l1_reverse"]
LSTM_PLACES = ["cx", "weight_hr_l0", "weight_hr_l1_reverse"]


def _places(fam) -> list[str]:
    return PLACES + [p for p in LSTM_PLACES if fam.has_c and (fam.proj_size or p == "cx")]


def _non_finite_cases() -> list:
    """The GRU's every place with every value; the other families' every place with one
    value each, in turn (the layers share the code that carries them)."""
    cases = []
    for fam in LAYERS:
        for b in fam.backends():
            for i, place in enumerate(_places(fam)):
                values = list(NON_FINITE) if fam is GRU else [list(NON_FINITE)[i % 3]]
                cases += [backend_param(fam, b, fam, b, place, v, id=f"{fam}-{b}-{place}-{v}")
                          for v in values]
    return cases


def _pair(fam, backend, seed=0, **kw):
    return fam.pair(I, H, backend=backend, seed=seed, dtype=DT, **kw)


def _hidden(fam, layers, batch=(B,)):
    return fam.state(lambda w: torch.randn(layers, *batch, w, dtype=DT), H)


def _leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def _outputs_and_grads(module, x, hx):
    """Outputs and the gradients of a loss of all of them w.r.t. x, hx and every weight."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    hx = tuple(t.clone().requires_grad_() for t in hx) if isinstance(hx, tuple) else \
        hx.clone().requires_grad_()
    out, hidden = module(x, hx)
    finals = _leaves(hidden)
    grads = torch.autograd.grad(out.sum() + sum(f.sum() for f in finals),
                                [x] + _leaves(hx) + list(module.parameters()), allow_unused=True)
    return [out.detach()] + [f.detach() for f in finals] + list(grads)


@pytest.mark.parametrize("fam,backend,place,value", _non_finite_cases())
def test_non_finite_values_propagate_like_nn(fam, backend, place, value):
    theirs, ours = _pair(fam, backend, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT)
    hx = _hidden(fam, 4)
    clean = _outputs_and_grads(theirs, x, hx)
    v = NON_FINITE[value]
    if place == "input_element":
        x[2, 1, 0] = v
    elif place == "input_row":
        x[2, 1, :] = v
    elif place in ("hx", "cx"):
        _leaves(hx)[place == "cx"][1, 2, 1] = v
    else:
        with torch.no_grad():
            for m in (theirs, ours):
                getattr(m, place)[1] = v
    expected = _outputs_and_grads(theirs, x, hx)
    n_out = 3 if fam.has_c else 2
    assert not all(torch.equal(a, b) for a, b in zip(clean[:n_out], expected[:n_out])), \
        "the value did not reach the output"
    assert_same_values(expected, _outputs_and_grads(ours, x, hx), f"{place}={value}", atol=ATOL)


@pytest.mark.parametrize("value", list(NON_FINITE))
@pytest.mark.parametrize("fam,backend", family_backends(CELLS))
def test_non_finite_values_in_a_cell_step_like_nn(fam, backend, value):
    theirs, ours = fam.pair(I, H, dtype=DT, backend=backend, seed=1)
    x, hx = torch.randn(B, I, dtype=DT), fam.state(lambda w: torch.randn(B, w, dtype=DT), H)
    x[0, 1] = _leaves(hx)[0][2, 0] = NON_FINITE[value]
    if fam.has_c:
        hx[1][1, 3] = NON_FINITE[value]
    assert_same_values(theirs(x, hx), ours(x, hx), "step", atol=ATOL)


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_non_finite_padding_is_ignored_like_packing(fam, backend):
    """With lengths=, the steps past a row's length do not exist, as in a PackedSequence:
    NaN or Inf there reach neither the outputs nor any gradient."""
    theirs, ours = _pair(fam, backend, bidirectional=True)
    lengths = torch.tensor([5, 2, 3])
    x = torch.randn(T, B, I, dtype=DT)
    for row, n in enumerate(lengths.tolist()):
        x[n:, row] = float("nan") if row % 2 else float("inf")
    x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_t, hidden_t = theirs(pack_padded_sequence(x_t, lengths, enforce_sorted=False))
    out_t, _ = pad_packed_sequence(out_t, total_length=T)
    out_o, hidden_o = ours(x_o, lengths=lengths)
    results = []
    for m, x_, out, hidden in ((theirs, x_t, out_t, hidden_t), (ours, x_o, out_o, hidden_o)):
        finals = _leaves(hidden)
        grads = torch.autograd.grad(out.sum() + sum(f.sum() for f in finals),
                                    [x_] + list(m.parameters()))
        results.append([out.detach()] + [f.detach() for f in finals] + list(grads))
    assert all(torch.isfinite(t).all() for t in results[1])
    assert_same_values(results[0], results[1], "padded NaN/Inf", atol=ATOL)


@pytest.mark.slow
@pytest.mark.skipif("fused" not in available_backends(), reason="gru_torch extension not built")
def test_hundred_thousand_steps_one_row():
    """T = 100,000, B = 1 on the fused op: the forward equals nn.GRU's; the gradient is
    finite everywhere and, over the last steps, equals nn.GRU's from the state the fused
    forward reached there (nn.GRU's own backward over 100,000 steps takes minutes)."""
    steps, tail = 100_000, 50
    theirs, ours = _pair(GRU, "fused", seed=2)
    x = torch.randn(steps, 1, I, dtype=DT)
    with torch.no_grad():
        expected = theirs(x)
    x_o = x.clone().requires_grad_()
    out, h_n = ours(x_o)
    assert_same_values(expected, (out.detach(), h_n.detach()), "forward", atol=ATOL)
    w = torch.randn(tail, 1, H, dtype=DT)
    grads = torch.autograd.grad((out[-tail:] * w).sum() + h_n.sum(),
                                [x_o] + list(ours.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    x_tail = x[-tail:].clone().requires_grad_()
    out_t, h_t = theirs(x_tail, out[-tail - 1:-tail].detach())
    (g_tail,) = torch.autograd.grad((out_t * w).sum() + h_t.sum(), x_tail)
    assert_same_values(g_tail, grads[0][-tail:], "input gradient over the last steps", atol=ATOL)
    assert grads[0][:-tail].abs().max() < grads[0][-tail:].abs().max()


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_expanded_and_non_contiguous_leaves_get_nn_gradients(fam, backend):
    theirs, ours = _pair(fam, backend, num_layers=2, batch_first=True)
    results = []
    for m in (theirs, ours):
        torch.manual_seed(3)
        base = torch.randn(1, 1, I, dtype=DT, requires_grad=True)
        strided = torch.randn(H, B, 2, dtype=DT, requires_grad=True)
        state = strided[..., 0].t().unsqueeze(0).expand(2, B, H)
        hx = (state[..., :fam.h_size(H)], state) if fam.has_c else state
        out, hidden = m(base.expand(B, T, I), hx)
        loss = (out ** 2).sum() + sum(f.sum() for f in _leaves(hidden))
        results.append(torch.autograd.grad(loss, [base, strided]))
    assert_same_values(results[0], results[1], "grads", atol=ATOL)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_grad_modes_like_nn(fam, backend, mode):
    theirs, ours = _pair(fam, backend, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        expected, got = theirs(x), ours(x)
    assert_same_values(expected, got, mode, atol=ATOL)
    flat = lambda r: [r[0]] + _leaves(r[1])  # noqa: E731
    assert [t.is_inference() for t in flat(got)] == [t.is_inference() for t in flat(expected)]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("fam,backend", family_backends(CELLS))
def test_cell_grad_modes_like_nn(fam, backend, mode):
    theirs, ours = fam.pair(I, H, dtype=DT, backend=backend)
    x = torch.randn(B, I, dtype=DT)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        a, b = theirs(x), ours(x)
    assert_same_values(a, b, f"cell {mode}", atol=ATOL)
    assert [t.is_inference() for t in _leaves(a)] == [t.is_inference() for t in _leaves(b)]


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_meta_module_materialized_with_to_empty(fam, backend):
    """Built on the meta device (no memory), moved to the CPU with to_empty, given
    weights: the same module as one built on the CPU."""
    theirs = fam.nn_cls(I, H, 2, bidirectional=True, dtype=DT, **fam.kw)
    ours = fam.ours_cls(I, H, 2, bidirectional=True, dtype=DT, device="meta", backend=backend,
                        **fam.kw)
    out, hidden = ours(torch.randn(T, B, I, dtype=DT, device="meta"))
    P = fam.h_size(H)
    assert out.device.type == "meta" and out.shape == (T, B, 2 * P)
    assert [tuple(t.shape) for t in _leaves(hidden)] == [(4, B, P)] + [(4, B, H)] * fam.has_c
    ours = ours.to_empty(device="cpu")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    assert_same_values(theirs(x), ours(x), "after to_empty", atol=ATOL)


@pytest.mark.filterwarnings("ignore:gru_torch. falling back to")
@pytest.mark.parametrize("fam", family_params(LAYERS))
def test_cpu_autocast_like_nn(fam):
    """Under CPU autocast nn's layers skip their dtype check: a bfloat16 input to a
    float32 layer runs in bfloat16. gru_torch hands such a call to nn's kernel, so the
    result is nn's. A float32 input gives nn's dtype: float32 for the GRU (gru_torch's
    fused op computes it in float32 throughout; nn.GRU's matrix products run in
    bfloat16, so values differ at bfloat16's precision); the LSTM and the RNN likewise
    on the fused family op, and bfloat16 for the LSTM with projections, which "auto" runs
    through nn's kernel on the CPU."""
    theirs, ours = fam.pair(I, H, 2, seed=4)
    cell_t, cell_o = LAYER_CELL[fam].pair(I, H, seed=4)
    x = torch.randn(T, B, I)
    bf16_state = fam.state(lambda w: torch.zeros(2, B, w, dtype=torch.bfloat16), H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same_values(theirs(x.bfloat16()), ours(x.bfloat16()), "bf16 input", atol=0)
        assert_same_values(theirs(x, bf16_state), ours(x, bf16_state), "bf16 hx", atol=0)
        assert_same_values(cell_t(x[0].bfloat16()), cell_o(x[0].bfloat16()), "cell", atol=0)
        out_t, _ = theirs(x)
        out_o, _ = ours(x)
        with pytest.raises(RuntimeError, match="must have the same dtype"):
            theirs(x.double())
        with pytest.raises(RuntimeError, match="must have the same dtype"):
            ours(x.double())
    assert out_t.dtype == (torch.float32 if fam is GRU else torch.bfloat16)
    assert out_o.dtype == (torch.float32 if fam.fused else torch.bfloat16)
    torch.testing.assert_close(out_o.float(), out_t.float(), atol=2e-2, rtol=0)


def test_cpu_autocast_refuses_what_nn_cannot_run():
    x = torch.randn(B, I)
    for keras_cell in (gru_torch.GRU(I, H, reset_after=False),
                       gru_torch.GRUCell(I, H, reset_after=False),
                       gru_torch.LSTM(I, H, recurrent_activation="hard_sigmoid_keras3"),
                       gru_torch.LSTMCell(I, H, recurrent_activation="hard_sigmoid_keras3")):
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="autocast"):
            keras_cell(x.bfloat16())
