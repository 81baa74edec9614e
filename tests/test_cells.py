"""Keras's GRU cells (reset_after=False / True) checked against an independent numpy
implementation, parameter counts, and recurrent (variational) dropout."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import gru_torch
from gru_torch import backends, ops
from gru_torch.reference import gru_layer_reference
from conftest import (assert_close, available_backends, dropout_backends,
                      keras_capable_backends)

T, B, I, H = 6, 3, 4, 5
DT = torch.float64
ATOL = 1e-10


# ------------------------------------------------------------ independent numpy oracle
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def keras_gru_numpy(x, kernel, recurrent_kernel, bias, h0, reset_after, go_backwards=False):
    """A Keras 2 GRU layer (return_sequences=True, return_state=True) in numpy.

    x [B, T, I]; kernel [I, 3H]; recurrent_kernel [H, 3H]; gate column blocks z, r, h.
    bias: [3H] (reset_after=False, input side only), [2, 3H] (reset_after=True: row 0
    input, row 1 recurrent) or None. h0 [B, H].
    Returns (outputs [B, T, H], final state [B, H]); with go_backwards the sequence is
    read from the end, and outputs are given back in the input's time order (as
    keras.layers.Bidirectional does for its backward layer).
    """
    Hn = recurrent_kernel.shape[0]
    Bn, Tn, _ = x.shape
    Wz, Wr, Wh = kernel[:, :Hn], kernel[:, Hn:2 * Hn], kernel[:, 2 * Hn:]
    Uz, Ur, Uh = (recurrent_kernel[:, :Hn], recurrent_kernel[:, Hn:2 * Hn],
                  recurrent_kernel[:, 2 * Hn:])
    if bias is None:
        b_in = np.zeros(3 * Hn)
        b_rec = np.zeros(3 * Hn)
    elif reset_after:
        assert bias.shape == (2, 3 * Hn)
        b_in, b_rec = bias[0], bias[1]
    else:
        assert bias.shape == (3 * Hn,)
        b_in, b_rec = bias, None
    bz, br, bh = b_in[:Hn], b_in[Hn:2 * Hn], b_in[2 * Hn:]
    h = h0.copy()
    outputs = np.zeros((Bn, Tn, Hn))
    steps = range(Tn - 1, -1, -1) if go_backwards else range(Tn)
    for t in steps:
        xt = x[:, t]
        if reset_after:
            rz, rr, rh = b_rec[:Hn], b_rec[Hn:2 * Hn], b_rec[2 * Hn:]
            z = _sigmoid(xt @ Wz + bz + h @ Uz + rz)
            r = _sigmoid(xt @ Wr + br + h @ Ur + rr)
            hh = np.tanh(xt @ Wh + bh + r * (h @ Uh + rh))
        else:
            z = _sigmoid(xt @ Wz + bz + h @ Uz)
            r = _sigmoid(xt @ Wr + br + h @ Ur)
            hh = np.tanh(xt @ Wh + bh + (r * h) @ Uh)
        h = z * h + (1.0 - z) * hh
        outputs[:, t] = h
    return outputs, h


def random_keras_weights(rng, in_size, reset_after, use_bias=True, scale=0.6):
    kernel = rng.uniform(-scale, scale, size=(in_size, 3 * H))
    recurrent = rng.uniform(-scale, scale, size=(H, 3 * H))
    if not use_bias:
        return [kernel, recurrent]
    bias = rng.uniform(-scale, scale, size=(2, 3 * H) if reset_after else (3 * H,))
    return [kernel, recurrent, bias]


def _np_bias(w):
    return w[2] if len(w) == 3 else None


def _to_np(t):
    return t.detach().cpu().numpy()


def _backends_for(reset_after):
    return available_backends() if reset_after else keras_capable_backends()


CELL_CASES = [(b, ra) for ra in (False, True) for b in _backends_for(ra)]
CELL_IDS = [f"{b}-reset_after={ra}" for b, ra in CELL_CASES]


# ---------------------------------------------------------------- Keras weights
@pytest.mark.parametrize("backend,reset_after", CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_keras_single_layer(backend, reset_after, with_h0):
    rng = np.random.default_rng(10 + reset_after + 2 * with_h0)
    w = random_keras_weights(rng, I, reset_after)
    x = rng.standard_normal((B, T, I))
    h0 = rng.uniform(-1, 1, size=(B, H)) if with_h0 else np.zeros((B, H))
    exp_out, exp_h = keras_gru_numpy(x, w[0], w[1], w[2], h0, reset_after)

    gru = gru_torch.GRU(I, H, batch_first=True, reset_after=reset_after, dtype=DT,
                        backend=backend)
    gru.load_keras_weights(w)
    hx = torch.from_numpy(h0)[None] if with_h0 else None
    out, h_n = gru(torch.from_numpy(x), hx)
    assert out.shape == (B, T, H) and h_n.shape == (1, B, H)
    np.testing.assert_allclose(_to_np(out), exp_out, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(h_n[0]), exp_h, atol=ATOL, rtol=0)


def test_keras_cells_really_differ():
    """Guards the oracle: the two cells give different results on the same weights, so
    the tests above could tell them apart."""
    rng = np.random.default_rng(0)
    w = random_keras_weights(rng, I, True)
    x = rng.standard_normal((B, T, I))
    h0 = np.zeros((B, H))
    a, _ = keras_gru_numpy(x, w[0], w[1], w[2], h0, True)
    b, _ = keras_gru_numpy(x, w[0], w[1], w[2][0] + 0.0, h0, False)
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("backend,reset_after", CELL_CASES, ids=CELL_IDS)
def test_keras_weights_as_tensors_and_without_bias(backend, reset_after):
    """get_weights() without a bias (use_bias=False) zeroes the GRU's biases; torch
    tensors are accepted as well as numpy arrays."""
    rng = np.random.default_rng(20 + reset_after)
    w = random_keras_weights(rng, I, reset_after, use_bias=False)
    x = rng.standard_normal((B, T, I))
    exp_out, exp_h = keras_gru_numpy(x, w[0], w[1], None, np.zeros((B, H)), reset_after)
    gru = gru_torch.GRU(I, H, batch_first=True, reset_after=reset_after, dtype=DT,
                        backend=backend)
    with torch.no_grad():
        for name, p in gru.named_parameters():
            if name.startswith("bias"):
                p.fill_(0.5)
    gru.load_keras_weights([torch.from_numpy(a) for a in w])
    for name, p in gru.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    out, h_n = gru(torch.from_numpy(x))
    np.testing.assert_allclose(_to_np(out), exp_out, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(h_n[0]), exp_h, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend,reset_after", CELL_CASES, ids=CELL_IDS)
def test_keras_bidirectional_reverse(backend, reset_after):
    rng = np.random.default_rng(30 + reset_after)
    w_fwd = random_keras_weights(rng, I, reset_after)
    w_bwd = random_keras_weights(rng, I, reset_after)
    x = rng.standard_normal((B, T, I))
    h0 = rng.uniform(-1, 1, size=(2, B, H))
    exp_f, exp_hf = keras_gru_numpy(x, *w_fwd, h0[0], reset_after)
    exp_b, exp_hb = keras_gru_numpy(x, *w_bwd, h0[1], reset_after, go_backwards=True)

    gru = gru_torch.GRU(I, H, batch_first=True, bidirectional=True, reset_after=reset_after,
                        dtype=DT, backend=backend)
    gru.load_keras_weights(w_fwd)
    gru.load_keras_weights(w_bwd, layer=0, reverse=True)
    out, h_n = gru(torch.from_numpy(x), torch.from_numpy(h0))
    assert out.shape == (B, T, 2 * H)
    np.testing.assert_allclose(_to_np(out[..., :H]), exp_f, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(out[..., H:]), exp_b, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(h_n[0]), exp_hf, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(h_n[1]), exp_hb, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend,reset_after", CELL_CASES, ids=CELL_IDS)
def test_keras_two_layers(backend, reset_after):
    rng = np.random.default_rng(40 + reset_after)
    w0 = random_keras_weights(rng, I, reset_after)
    w1 = random_keras_weights(rng, H, reset_after)
    x = rng.standard_normal((B, T, I))
    h0 = rng.uniform(-1, 1, size=(2, B, H))
    mid, exp_h0 = keras_gru_numpy(x, *w0, h0[0], reset_after)
    exp_out, exp_h1 = keras_gru_numpy(mid, *w1, h0[1], reset_after)

    gru = gru_torch.GRU(I, H, num_layers=2, batch_first=True, reset_after=reset_after,
                        dtype=DT, backend=backend)
    gru.load_keras_weights(w0)
    gru.load_keras_weights(w1, layer=1)
    out, h_n = gru(torch.from_numpy(x), torch.from_numpy(h0))
    np.testing.assert_allclose(_to_np(out), exp_out, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(h_n[0]), exp_h0, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_to_np(h_n[1]), exp_h1, atol=ATOL, rtol=0)


def test_reset_after_false_cannot_use_cudnn():
    gru = gru_torch.GRU(I, H, batch_first=True, reset_after=False, dtype=DT, backend="cudnn")
    with pytest.raises(RuntimeError, match="reset_after"):
        gru(torch.randn(B, T, I, dtype=DT))
    with pytest.raises(ValueError, match="reset_after"):
        gru.to_torch()


@pytest.mark.parametrize("reset_after", [False, True])
def test_keras_bias_shape_must_match_cell(reset_after):
    rng = np.random.default_rng(50)
    w = random_keras_weights(rng, I, not reset_after)  # the other cell's bias shape
    gru = gru_torch.GRU(I, H, batch_first=True, reset_after=reset_after, dtype=DT)
    before = {k: v.clone() for k, v in gru.state_dict().items()}
    with pytest.raises(ValueError, match="bias"):
        gru.load_keras_weights(w)
    # nothing was half-loaded
    for k, v in gru.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="bias"):
        gru.load_keras_weights([w[0], w[1], np.zeros((4, 3 * H))])


def test_keras_kernel_shapes_checked():
    rng = np.random.default_rng(51)
    kernel, recurrent, bias = random_keras_weights(rng, I, True)
    gru = gru_torch.GRU(I, H, batch_first=True, dtype=DT)
    with pytest.raises(ValueError, match="^kernel"):
        gru.load_keras_weights([kernel[:-1], recurrent, bias])
    with pytest.raises(ValueError, match="^kernel"):
        gru.load_keras_weights([kernel.T, recurrent, bias])  # torch layout, not Keras's
    with pytest.raises(ValueError, match="recurrent_kernel"):
        gru.load_keras_weights([kernel, recurrent[:, :-1], bias])
    with pytest.raises(ValueError, match="get_weights"):
        gru.load_keras_weights([kernel])
    # layer 1 of a 2-layer GRU takes H inputs, not I
    gru2 = gru_torch.GRU(I, H, num_layers=2, dtype=DT)
    with pytest.raises(ValueError, match="^kernel"):
        gru2.load_keras_weights([kernel, recurrent, bias], layer=1)


def test_keras_layer_and_direction_checked():
    rng = np.random.default_rng(52)
    w = random_keras_weights(rng, I, True)
    gru = gru_torch.GRU(I, H, dtype=DT)
    with pytest.raises(ValueError, match="reverse"):
        gru.load_keras_weights(w, reverse=True)
    with pytest.raises(ValueError, match="layer"):
        gru.load_keras_weights(w, layer=1)
    with pytest.raises(ValueError, match="bias=False"):
        gru_torch.GRU(I, H, bias=False, dtype=DT).load_keras_weights(w)


# ------------------------------------------------------------------ parameter count
def test_parameter_count_reset_after_false_matches_keras():
    gru = gru_torch.GRU(50, 100, reset_after=False)
    n = sum(p.numel() for p in gru.parameters())
    assert n == 3 * (50 * 100 + 100 * 100 + 100) == 45300
    assert not hasattr(gru, "bias_hh_l0")
    assert "bias_hh_l0" not in gru.state_dict()
    assert set(gru.state_dict()) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0"}


def test_parameter_count_reset_after_true_matches_nn_gru():
    gru = gru_torch.GRU(50, 100, num_layers=2, bidirectional=True)
    ref = nn.GRU(50, 100, num_layers=2, bidirectional=True)
    assert sum(p.numel() for p in gru.parameters()) == sum(p.numel() for p in ref.parameters())
    # Keras's reset_after=True count for one layer-direction: 3*(I*H + H*H + 2*H)
    one = gru_torch.GRU(50, 100)
    assert sum(p.numel() for p in one.parameters()) == 3 * (50 * 100 + 100 * 100 + 2 * 100)


def test_reset_after_false_bidirectional_two_layer_names():
    gru = gru_torch.GRU(I, H, num_layers=2, bidirectional=True, reset_after=False)
    names = set(gru.state_dict())
    assert not any(n.startswith("bias_hh") for n in names)
    assert {"bias_ih_l0", "bias_ih_l0_reverse", "bias_ih_l1", "bias_ih_l1_reverse"} <= names
    assert gru.weight_ih_l1.shape == (3 * H, 2 * H)


# --------------------------------------- reset_after=False gradients: fused vs reference
FUSED = "fused" in available_backends()


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded")
@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_fused_gradients_match_reference(reset_after, bidirectional, use_lengths):
    """nn.GRU cannot check the reset_after=False cell's backward; the reference loop
    (plain autograd) can."""
    torch.manual_seed(60)
    ref = gru_torch.GRU(I, H, 2, bidirectional=bidirectional, reset_after=reset_after,
                        dtype=DT, backend="reference")
    fused = gru_torch.GRU(I, H, 2, bidirectional=bidirectional, reset_after=reset_after,
                          dtype=DT, backend="fused")
    fused.load_state_dict(ref.state_dict(), strict=True)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=DT)
    hx = torch.randn(2 * D, B, H, dtype=DT)
    w_out = torch.randn(T, B, D * H, dtype=DT)
    w_h = torch.randn(2 * D, B, H, dtype=DT)
    kw = {"lengths": torch.tensor([4, 6, 4])} if use_lengths else {}
    results = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_(True)
        hi = hx.clone().requires_grad_(True)
        out, h_n = m(xi, hi, **kw)
        loss = (out * w_out).sum() + (h_n * w_h).sum()
        grads = torch.autograd.grad(loss, [xi, hi] + list(m.parameters()))
        results.append((out.detach(), h_n.detach(), grads))
    names = ["input", "hx"] + [n for n, _ in ref.named_parameters()]
    assert_close(results[1][0], results[0][0], atol=ATOL, what="output")
    assert_close(results[1][1], results[0][1], atol=ATOL, what="h_n")
    for name, g_f, g_r in zip(names, results[1][2], results[0][2]):
        assert g_r.abs().sum() > 0, name
        assert_close(g_f, g_r, atol=ATOL, what=f"grad {name}")


# ------------------------------------------------------------------ recurrent dropout
def _stacked(gru, layer, kind):
    sfx = ["", "_reverse"] if gru.bidirectional else [""]
    name = f"{kind}_l{layer}"
    if not hasattr(gru, name + sfx[0]):
        return None
    return torch.stack([getattr(gru, name + s) for s in sfx])


RD_CASES = list(itertools.product(dropout_backends(), [False, True], [1, 2], [False, True],
                                  [False, True]))


@pytest.mark.parametrize("backend,reset_after,num_layers,bidirectional,use_lengths", RD_CASES,
                         ids=[f"{b}-ra={ra}-L{L}-{'bi' if d else 'uni'}-{'len' if ul else 'full'}"
                              for b, ra, L, d, ul in RD_CASES])
def test_recurrent_dropout_uses_one_mask_per_sequence(backend, reset_after, num_layers,
                                                      bidirectional, use_lengths):
    """The module's train-mode result equals the reference layer op run with masks drawn
    as the module draws them (bernoulli(keep)/keep, [D, B, H], one per layer, before
    each layer's op): one mask for every time step."""
    p = 0.4
    keep = 1.0 - p
    torch.manual_seed(70)
    gru = gru_torch.GRU(I, H, num_layers, bidirectional=bidirectional, reset_after=reset_after,
                        recurrent_dropout=p, dtype=DT, backend=backend).train()
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=DT)
    hx = torch.randn(num_layers * D, B, H, dtype=DT)
    lengths = torch.tensor([4, 6, 4]) if use_lengths else None
    w_out = torch.randn(T, B, D * H, dtype=DT)

    torch.manual_seed(1234)
    xi = x.clone().requires_grad_(True)
    out, h_n = gru(xi, hx, lengths=lengths)
    g_mod = torch.autograd.grad((out * w_out).sum() + h_n.sum(), [xi] + list(gru.parameters()))

    torch.manual_seed(1234)
    xr = x.clone().requires_grad_(True)
    layer_in, finals, masks = xr, [], []
    for layer in range(num_layers):
        mask = torch.bernoulli(x.new_full((D, B, H), keep)) / keep
        masks.append(mask)
        layer_in, h_last = gru_layer_reference(
            layer_in, hx[layer * D:(layer + 1) * D], _stacked(gru, layer, "weight_ih"),
            _stacked(gru, layer, "weight_hh"), _stacked(gru, layer, "bias_ih"),
            _stacked(gru, layer, "bias_hh"), mask, lengths, reset_after)
        finals.append(h_last)
    exp_out, exp_h = layer_in, torch.cat(finals)
    g_exp = torch.autograd.grad((exp_out * w_out).sum() + exp_h.sum(), [xr] + list(gru.parameters()))

    # the masks really drop something, so the test can tell masks apart
    assert all(bool((m == 0).any()) for m in masks)
    assert_close(out.detach(), exp_out.detach(), atol=1e-12, what="output")
    assert_close(h_n.detach(), exp_h.detach(), atol=1e-12, what="h_n")
    names = ["input"] + [n for n, _ in gru.named_parameters()]
    for name, a, b in zip(names, g_mod, g_exp):
        assert_close(a, b, atol=1e-11, what=f"grad {name}")

    # and it is not the eval-mode (no mask) result
    with torch.no_grad():
        eval_out, _ = gru.eval()(x, hx, lengths=lengths)
    assert (eval_out - out.detach()).abs().max() > 1e-6


@pytest.mark.parametrize("backend", dropout_backends())
def test_recurrent_dropout_zero_train_equals_eval_and_nn_gru(backend):
    torch.manual_seed(80)
    ref = nn.GRU(I, H, 2, bidirectional=True, dtype=DT)
    gru = gru_torch.GRU.from_torch(ref, recurrent_dropout=0.0, backend=backend)
    x = torch.randn(T, B, I, dtype=DT)
    out_t, h_t = gru.train()(x)
    out_e, h_e = gru.eval()(x)
    assert torch.equal(out_t, out_e) and torch.equal(h_t, h_e)
    out_r, h_r = ref(x)
    assert_close(out_t.detach(), out_r.detach(), atol=ATOL, what="output")
    assert_close(h_t.detach(), h_r.detach(), atol=ATOL, what="h_n")


@pytest.mark.parametrize("backend", available_backends())
def test_recurrent_dropout_eval_is_deterministic_and_inactive(backend):
    """Eval mode ignores recurrent_dropout (so even backend='cudnn' runs)."""
    torch.manual_seed(81)
    ref = nn.GRU(I, H, 2, dtype=DT)
    gru = gru_torch.GRU.from_torch(ref, recurrent_dropout=0.5, backend=backend).eval()
    x = torch.randn(T, B, I, dtype=DT)
    out1, h1 = gru(x)
    out2, h2 = gru(x)
    assert torch.equal(out1, out2) and torch.equal(h1, h2)
    out_r, h_r = ref(x)
    assert_close(out1.detach(), out_r.detach(), atol=ATOL, what="output")
    assert_close(h1.detach(), h_r.detach(), atol=ATOL, what="h_n")


@pytest.mark.parametrize("backend", dropout_backends())
def test_recurrent_dropout_train_calls_differ(backend):
    torch.manual_seed(82)
    gru = gru_torch.GRU(I, H, recurrent_dropout=0.5, dtype=DT, backend=backend).train()
    x = torch.randn(T, B, I, dtype=DT)
    out1, _ = gru(x)
    out2, _ = gru(x)
    assert (out1 - out2).abs().max() > 1e-6
    # the first step sees h0 = 0, which no mask changes: only later steps differ
    assert torch.equal(out1[0], out2[0])


@pytest.mark.parametrize("p", [0.25, 0.5])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_mask_statistics(p, bidirectional):
    """The mask is bernoulli(1-p)/(1-p): entries 0 or 1/(1-p), mean 1, so that the
    expected recurrent pre-activation E[(h*m) W^T] is h W^T."""
    torch.manual_seed(90)
    keep = 1.0 - p
    Bm = 20000
    gru = gru_torch.GRU(I, H, bidirectional=bidirectional, recurrent_dropout=p, dtype=DT,
                        backend="reference").train()
    D = 2 if bidirectional else 1
    like = torch.zeros(1, Bm, I, dtype=DT)
    mask = gru._masks(Bm, I, like)[1].squeeze(2)  # [D, B, 1, H]: one mask for every gate
    assert mask.shape == (D, Bm, H) and mask.dtype == DT
    values = torch.unique(mask)
    assert values.tolist() == pytest.approx([0.0, 1.0 / keep])
    n = mask.numel()
    se = (p / keep / n) ** 0.5  # std of one entry is sqrt(p/keep)
    assert abs(mask.mean().item() - 1.0) < 4 * se
    assert abs((mask == 0).double().mean().item() - p) < 4 * (p * keep / n) ** 0.5

    # E[(h0 * m) W_hh^T] = h0 W_hh^T, per output column, within 4 standard errors
    h0 = torch.randn(H, dtype=DT)
    w_hh = gru.weight_hh_l0.detach()
    gh = (h0 * mask[0]) @ w_hh.t()  # [Bm, 3H]
    want = h0 @ w_hh.t()
    se_cols = gh.std(dim=0) / Bm ** 0.5
    assert bool(((gh.mean(dim=0) - want).abs() < 4 * se_cols).all())
    # while a mask that forgot to rescale would be off by far more
    assert bool(((gh.mean(dim=0) * keep - want).abs() > 4 * se_cols).any())

    # different rows and directions get different masks
    assert not torch.equal(mask[0, 0], mask[0, 1]) or not torch.equal(mask[0, 1], mask[0, 2])
    if bidirectional:
        assert not torch.equal(mask[0], mask[1])


def test_recurrent_mask_absent_when_inactive():
    like = torch.zeros(T, B, I, dtype=DT)
    g = gru_torch.GRU(I, H, recurrent_dropout=0.5, dtype=DT)
    assert g.eval()._masks(B, I, like) == (None, None)
    assert g.train()._masks(B, I, like)[1] is not None
    g0 = gru_torch.GRU(I, H, recurrent_dropout=0.0, dtype=DT).train()
    assert g0._masks(B, I, like) == (None, None)


# ------------------------------------------------- backend choice with recurrent dropout
def test_cudnn_rejects_recurrent_dropout_in_training():
    gru = gru_torch.GRU(I, H, recurrent_dropout=0.3, dtype=DT, backend="cudnn").train()
    with pytest.raises(RuntimeError, match="recurrent dropout"):
        gru(torch.randn(T, B, I, dtype=DT))
    gru.eval()(torch.randn(T, B, I, dtype=DT))  # fine in eval mode


def test_auto_without_fused_falls_back_with_warning(clear_warned, record_backend):
    """When the fused op cannot run the call, "auto" with recurrent dropout in training
    must fall back past nn.GRU to the reference loop, and say so."""
    if FUSED:
        dtype = torch.bfloat16  # the fused CPU kernel does not take it
        reason = "bfloat16"
    else:
        dtype = DT
        reason = "not built"
    gru = gru_torch.GRU(I, H, recurrent_dropout=0.3, dtype=dtype, backend="auto").train()
    x = torch.randn(T, B, I, dtype=dtype)
    with pytest.warns(UserWarning, match="reference") as rec:
        out, _ = gru(x)
    assert record_backend.last == "reference"
    msgs = [str(w.message) for w in rec]
    assert any(reason in m and "recurrent dropout" in m for m in msgs), msgs
    assert out.shape == (T, B, H) and out.dtype == dtype
    # in eval mode nn.GRU can run it
    gru.eval()
    with pytest.warns(UserWarning, match="nn.GRU"):
        gru(x)
    assert record_backend.last == "cudnn"


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded")
def test_auto_with_fused_runs_recurrent_dropout_fused(record_backend, gru_warnings):
    gru = gru_torch.GRU(I, H, recurrent_dropout=0.3, reset_after=False, dtype=DT).train()
    gru(torch.randn(T, B, I, dtype=DT))
    assert record_backend.last == "fused"
    assert gru_warnings() == []


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded")
@pytest.mark.parametrize("reset_after", [False, True])
def test_input_dropout_with_shared_masks_runs_fused_as_the_reference(reset_after):
    """Keras's `dropout` with one mask for every gate, one direction: the fused op
    multiplies the input by the mask before the layer, and matches the reference loop
    (which masks each step's input) in values and every gradient, with lengths."""
    def run(backend, p=0.4):
        torch.manual_seed(5)
        gru = gru_torch.GRU(I, H, 2, reset_after=reset_after, input_dropout=p,
                            recurrent_dropout=0.3, dtype=DT, backend=backend).train()
        x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
        torch.manual_seed(99)
        out, h_n = gru(x, lengths=torch.tensor([T, 3, 5]))
        grads = torch.autograd.grad(out.sum() + (h_n ** 2).sum(), [x, *gru.parameters()])
        return out, h_n, grads, gru

    out, h_n, grads, gru = run("fused")
    assert backends.fused_reason(gru.training_config()) is None
    r_out, r_h, r_grads, _ = run("reference")
    assert_close(out.detach(), r_out.detach(), atol=1e-12, what="output")
    assert_close(h_n.detach(), r_h.detach(), atol=1e-12, what="h_n")
    for a, b in zip(grads, r_grads):
        assert_close(a, b, atol=1e-11, what="gradient")
    assert (run("fused", p=0.0)[0] - out).abs().max() > 1e-3  # the input masks drop something
    # the GRU op takes neither of these; the family op takes the first (on the CPU and on a
    # GPU) and the second on the CPU only
    bi = gru_torch.GRU(I, H, bidirectional=True, input_dropout=0.4, dtype=DT)
    assert backends.fused_reason(bi.training_config()) is None
    assert "two directions" in ops.gru_op_reason(bi.cell, True, "shared", True, 2)
    assert ops.cell_reason(bi.cell, True, "shared", True, False, 2, torch.device("cuda")) is None
    assert "GPU" in ops.cell_reason(bi.cell, True, "per_gate", True, False, 2, torch.device("cuda"))
    per_gate = gru_torch.GRU(I, H, input_dropout=0.4, dropout_masks="per_gate", dtype=DT)
    assert backends.fused_reason(per_gate.training_config()) is None
    assert "one per gate" in ops.gru_op_reason(per_gate.cell, True, "per_gate", True, 1)
