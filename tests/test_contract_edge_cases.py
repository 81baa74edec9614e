"""Edge cases side by side with nn.GRU / nn.GRUCell: NaN and Inf in every input and
weight, very long sequences, expanded inputs, grad modes, the meta device, autocast."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gru_torch
from conftest import available_backends
from contract import assert_same_values

T, B, I, H = 5, 3, 3, 4
DT = torch.float64
ATOL = 1e-10
NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
# where the non-finite value goes: the input, hx, or one weight of the first layer's
# forward or the second layer's reverse direction
PLACES = ["input_element", "input_row", "hx", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
          "bias_hh_l0", "weight_hh_l1_reverse", "bias_hh_l1_reverse"]


def _pair(backend, seed=0, **kw):
    torch.manual_seed(seed)
    theirs = nn.GRU(I, H, dtype=DT, **kw)
    return theirs, gru_torch.GRU.from_torch(theirs, backend=backend)


def _outputs_and_grads(module, x, hx):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    hx = hx.clone().requires_grad_()
    out, h_n = module(x, hx)
    grads = torch.autograd.grad(out.sum() + h_n.sum(), [x, hx] + list(module.parameters()),
                                allow_unused=True)
    return [out.detach(), h_n.detach()] + list(grads)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("place,value", list(itertools.product(PLACES, NON_FINITE)),
                         ids=[f"{p}-{v}" for p, v in itertools.product(PLACES, NON_FINITE)])
def test_non_finite_values_propagate_like_nn(backend, place, value):
    theirs, ours = _pair(backend, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT)
    hx = torch.randn(4, B, H, dtype=DT)
    clean = _outputs_and_grads(theirs, x, hx)
    v = NON_FINITE[value]
    if place == "input_element":
        x[2, 1, 0] = v
    elif place == "input_row":
        x[2, 1, :] = v
    elif place == "hx":
        hx[1, 2, 3] = v
    else:
        with torch.no_grad():
            for m in (theirs, ours):
                getattr(m, place)[1] = v
    expected = _outputs_and_grads(theirs, x, hx)
    assert not all(torch.equal(a, b) for a, b in zip(clean[:2], expected[:2])), \
        "the value did not reach the output"
    assert_same_values(expected, _outputs_and_grads(ours, x, hx), f"{place}={value}", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("value", list(NON_FINITE))
def test_non_finite_values_in_a_cell_step_like_nn(backend, value):
    torch.manual_seed(1)
    theirs = nn.GRUCell(I, H, dtype=DT)
    ours = gru_torch.GRUCell.from_torch(theirs, backend=backend)
    x, hx = torch.randn(B, I, dtype=DT), torch.randn(B, H, dtype=DT)
    x[0, 1] = hx[2, 0] = NON_FINITE[value]
    assert_same_values(theirs(x, hx), ours(x, hx), "step", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
def test_non_finite_padding_is_ignored_like_packing(backend):
    """With lengths=, the steps past a row's length do not exist, as in a PackedSequence:
    NaN or Inf there reach neither the outputs nor any gradient."""
    theirs, ours = _pair(backend, bidirectional=True)
    lengths = torch.tensor([5, 2, 3])
    x = torch.randn(T, B, I, dtype=DT)
    for row, n in enumerate(lengths.tolist()):
        x[n:, row] = float("nan") if row % 2 else float("inf")
    x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_t, h_t = theirs(pack_padded_sequence(x_t, lengths, enforce_sorted=False))
    out_t, _ = pad_packed_sequence(out_t, total_length=T)
    out_o, h_o = ours(x_o, lengths=lengths)
    results = []
    for m, x_, out, h in ((theirs, x_t, out_t, h_t), (ours, x_o, out_o, h_o)):
        grads = torch.autograd.grad(out.sum() + h.sum(), [x_] + list(m.parameters()))
        results.append([out.detach(), h.detach()] + list(grads))
    assert all(torch.isfinite(t).all() for t in results[1])
    assert_same_values(results[0], results[1], "padded NaN/Inf", atol=ATOL)


@pytest.mark.slow
@pytest.mark.skipif("fused" not in available_backends(), reason="gru_torch extension not built")
def test_hundred_thousand_steps_one_row():
    """T = 100,000, B = 1 on the fused op: the forward equals nn.GRU's; the gradient is
    finite everywhere and, over the last steps, equals nn.GRU's from the state the fused
    forward reached there (nn.GRU's own backward over 100,000 steps takes minutes)."""
    steps, tail = 100_000, 50
    theirs, ours = _pair("fused", seed=2)
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


@pytest.mark.parametrize("backend", available_backends())
def test_expanded_and_non_contiguous_leaves_get_nn_gradients(backend):
    theirs, ours = _pair(backend, num_layers=2, batch_first=True)
    results = []
    for m in (theirs, ours):
        torch.manual_seed(3)
        base = torch.randn(1, 1, I, dtype=DT, requires_grad=True)
        strided = torch.randn(H, B, 2, dtype=DT, requires_grad=True)
        hx = strided[..., 0].t().unsqueeze(0).expand(2, B, H)
        out, h_n = m(base.expand(B, T, I), hx)
        results.append(torch.autograd.grad((out ** 2).sum() + h_n.sum(), [base, strided]))
    assert_same_values(results[0], results[1], "grads", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_grad_modes_like_nn(backend, mode):
    theirs, ours = _pair(backend, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=DT)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        expected, got = theirs(x), ours(x)
    assert_same_values(expected, got, mode, atol=ATOL)
    assert [t.is_inference() for t in got] == [t.is_inference() for t in expected]
    cell_t = nn.GRUCell(I, H, dtype=DT)
    cell_o = gru_torch.GRUCell.from_torch(cell_t, backend=backend)
    with context():
        a, b = cell_t(x[0]), cell_o(x[0])
    assert_same_values(a, b, f"cell {mode}", atol=ATOL)
    assert a.is_inference() == b.is_inference()


@pytest.mark.parametrize("backend", available_backends())
def test_meta_module_materialized_with_to_empty(backend):
    """Built on the meta device (no memory), moved to the CPU with to_empty, given
    weights: the same module as one built on the CPU."""
    theirs = nn.GRU(I, H, 2, bidirectional=True, dtype=DT)
    ours = gru_torch.GRU(I, H, 2, bidirectional=True, dtype=DT, device="meta", backend=backend)
    out, h_n = ours(torch.randn(T, B, I, dtype=DT, device="meta"))
    assert out.device.type == "meta" and out.shape == (T, B, 2 * H) and h_n.shape == (4, B, H)
    ours = ours.to_empty(device="cpu")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    assert_same_values(theirs(x), ours(x), "after to_empty", atol=ATOL)


def test_cpu_autocast_like_nn():
    """Under CPU autocast nn.GRU skips its dtype check: a bfloat16 input to a float32
    GRU runs in bfloat16. gru_torch hands such a call to nn.GRU's kernel, so the result
    is nn.GRU's. A float32 input stays float32 in both (gru_torch's fused op computes it in
    float32 throughout; nn.GRU's matrix products run in bfloat16, so values differ at
    bfloat16's precision)."""
    torch.manual_seed(4)
    theirs = nn.GRU(I, H, 2)
    ours = gru_torch.GRU.from_torch(theirs)
    cell_t = nn.GRUCell(I, H)
    cell_o = gru_torch.GRUCell.from_torch(cell_t)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same_values(theirs(x.bfloat16()), ours(x.bfloat16()), "bf16 input", atol=0)
        assert_same_values(theirs(x, torch.zeros(2, B, H, dtype=torch.bfloat16)),
                           ours(x, torch.zeros(2, B, H, dtype=torch.bfloat16)), "bf16 hx", atol=0)
        assert_same_values(cell_t(x[0].bfloat16()), cell_o(x[0].bfloat16()), "cell", atol=0)
        out_t, _ = theirs(x)
        out_o, _ = ours(x)
        with pytest.raises(RuntimeError, match="mat1 and mat2 must have the same dtype"):
            theirs(x.double())
        with pytest.raises(RuntimeError, match="mat1 and mat2 must have the same dtype"):
            ours(x.double())
    assert out_o.dtype == out_t.dtype == torch.float32
    torch.testing.assert_close(out_o, out_t, atol=2e-2, rtol=0)
    for keras_cell in (gru_torch.GRU(I, H, reset_after=False),
                       gru_torch.GRUCell(I, H, reset_after=False)):
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="autocast"):
            keras_cell(x[0].bfloat16())
