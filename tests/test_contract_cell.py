"""Cell contract: every call below goes to nn.GRUCell, nn.LSTMCell and nn.RNNCell (tanh and
relu) and to gru_torch's namesake (each backend) with the same weights and arguments, and
must end the same way; then the cells' own features (reset_after, recurrent dropout,
conversions). An LSTMCell's hx is (h, c); its faults are put in both, and in c alone by
the LSTMCell's own cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import gru_torch
from conftest import keras_capable_backends
from contract import (CELLS, GRU_CELL, LSTM_CELL, Family, assert_same_layout,
                      assert_same_outcome, backend_param, family_params)
from gru_torch import ops

B, I, H = 3, 4, 5
F64, F32 = torch.float64, torch.float32


def rand(*shape, dtype=F64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class Case:
    name: str
    # args(state): state(make) is make(width) for h, and (h, make(width)) for an LSTMCell
    args: Callable[[Callable], tuple]
    sizes: tuple = (I, H)
    module_dtype: torch.dtype = F64
    module_device: str = "cpu"
    # nn's cells without biases multiply meta and CPU tensors without complaint (and
    # return values computed from weights that hold no data), so these mixtures are
    # errors only with biases; gru_torch runs them through nn's cell kernel as well.
    needs_bias: Callable[[Family], bool] = lambda fam: False  # noqa: E731
    lstm_only: bool = False


def h(*shape, **kw):
    """A state maker: make(width) -> a tensor of `shape` with the last entry the width."""
    return lambda w: rand(*shape, w, **kw)


VALID = [
    Case("batched", lambda s: (rand(B, I), s(h(B)))),
    Case("batched_no_hx", lambda s: (rand(B, I),)),
    Case("unbatched", lambda s: (rand(I), s(h()))),
    Case("unbatched_no_hx", lambda s: (rand(I),)),
    Case("batch_of_one", lambda s: (rand(1, I), s(h(1)))),
    Case("zero_batch", lambda s: (rand(0, I),)),
    Case("zero_batch_hx", lambda s: (rand(0, I), s(h(0)))),
    Case("non_contiguous", lambda s: (rand(I, B).t(), s(lambda w: rand(w, B).t()))),
    Case("expanded", lambda s: (rand(1, I).expand(B, I), s(lambda w: rand(1, w).expand(B, w)))),
    Case("input_requires_grad", lambda s: (rand(B, I).requires_grad_(), s(h(B)))),
    Case("float32", lambda s: (rand(B, I, dtype=F32), s(h(B, dtype=F32))), module_dtype=F32),
    Case("zero_hidden_size", lambda s: (rand(B, I), s(lambda w: rand(B, 0))), sizes=(I, 0)),
    Case("zero_input_size", lambda s: (rand(B, 0), s(h(B))), sizes=(0, H)),
    Case("meta", lambda s: (rand(B, I, device="meta"), s(h(B, device="meta"))),
         module_device="meta"),
    Case("meta_unbatched_no_hx", lambda s: (rand(I, device="meta"),), module_device="meta"),
    Case("lstm_hx_list", lambda s: (rand(B, I), list(s(h(B)))), lstm_only=True),
    # nn's LSTM cell leaves c's dtype to its kernel's arithmetic, which promotes it
    Case("lstm_cx_float32", lambda s: (rand(B, I), (rand(B, H), rand(B, H, dtype=F32))),
         lstm_only=True),
    Case("lstm_cx_float64_module_float32", lambda s: (rand(B, I, dtype=F32),
                                                       (rand(B, H, dtype=F32), rand(B, H))),
         module_dtype=F32, lstm_only=True),
    Case("lstm_cx_float32_unbatched", lambda s: (rand(I), (rand(H), rand(H, dtype=F32))),
         lstm_only=True),
]

REJECTED = [
    Case("input_0d", lambda s: (torch.tensor(1.0, dtype=F64),)),
    Case("input_3d", lambda s: (rand(1, B, I),)),
    Case("input_list", lambda s: ([[0.0] * I] * B,)),
    Case("input_none", lambda s: (None,)),
    Case("input_ndarray", lambda s: (np.zeros((B, I)),)),
    Case("hx_0d", lambda s: (rand(B, I), s(lambda w: torch.tensor(0.0, dtype=F64)))),
    Case("hx_3d", lambda s: (rand(B, I), s(h(1, B)))),
    Case("hx_list", lambda s: (rand(B, I), [[0.0] * H] * B)),
    Case("input_size_wrong", lambda s: (rand(B, I + 1), s(h(B)))),
    Case("input_size_wrong_unbatched", lambda s: (rand(I + 1), s(h()))),
    Case("input_size_wrong_no_hx", lambda s: (rand(B, I + 1),)),
    Case("hidden_size_wrong", lambda s: (rand(B, I), s(lambda w: rand(B, w + 1)))),
    Case("hidden_size_wrong_unbatched", lambda s: (rand(I), s(lambda w: rand(w - 1)))),
    Case("batch_mismatch", lambda s: (rand(B, I), s(h(B + 1)))),
    Case("hx_batch_of_one_not_broadcast", lambda s: (rand(B, I), s(h(1)))),
    Case("batched_input_1d_hx", lambda s: (rand(B, I), s(h()))),
    Case("batched_input_1d_hx_of_batch_length", lambda s: (rand(H, I), s(h()))),
    Case("unbatched_input_2d_hx", lambda s: (rand(I), s(h(1)))),
    Case("unbatched_input_2d_hx_rows", lambda s: (rand(I), s(h(2)))),
    Case("input_float32", lambda s: (rand(B, I, dtype=F32),)),
    Case("input_float32_hx_float64", lambda s: (rand(B, I, dtype=F32), s(h(B)))),
    Case("hx_float32", lambda s: (rand(B, I), s(h(B, dtype=F32)))),
    Case("input_int64", lambda s: (rand(B, I).long(),)),
    Case("input_float64_module_float32", lambda s: (rand(B, I),), module_dtype=F32),
    Case("hx_wrong_and_dtype", lambda s: (rand(B, I, dtype=F32), s(lambda w: rand(B, w + 1)))),
    Case("input_on_meta", lambda s: (rand(B, I, device="meta"),), needs_bias=lambda fam: True),
    Case("hx_on_meta", lambda s: (rand(B, I), s(h(B, device="meta"))),
         needs_bias=lambda fam: fam is not GRU_CELL),
    Case("module_on_meta", lambda s: (rand(B, I), s(h(B))), module_device="meta",
         needs_bias=lambda fam: True),
    # an LSTMCell's state: not a pair, or a fault in c alone
    Case("lstm_hx_one_tensor", lambda s: (rand(B, I), rand(B, H)), lstm_only=True),
    Case("lstm_hx_three", lambda s: (rand(B, I), (*s(h(B)), rand(B, H))), lstm_only=True),
    Case("lstm_hx_one_tuple", lambda s: (rand(B, I), (rand(B, H),)), lstm_only=True),
    Case("lstm_cx_none", lambda s: (rand(B, I), (rand(B, H), None)), lstm_only=True),
    Case("lstm_cx_hidden_wrong", lambda s: (rand(B, I), (rand(B, H), rand(B, H + 1))),
         lstm_only=True),
    Case("lstm_cx_batch_mismatch", lambda s: (rand(B, I), (rand(B, H), rand(B + 1, H))),
         lstm_only=True),
    Case("lstm_cx_1d", lambda s: (rand(B, I), (rand(B, H), rand(H))), lstm_only=True),
    Case("lstm_cx_on_meta", lambda s: (rand(B, I), (rand(B, H), rand(B, H, device="meta"))),
         lstm_only=True),
]


def _pair(fam: Family, case: Case, bias: bool, backend: str):
    torch.manual_seed(0)
    kw = dict(bias=bias, dtype=case.module_dtype, device=case.module_device, **fam.kw)
    theirs = fam.nn_cls(*case.sizes, **kw)
    ours = fam.ours_cls(*case.sizes, **kw, backend=backend)
    if case.module_device != "meta":
        ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _check(fam: Family, case: Case, bias: bool, backend: str, expect_error: bool):
    theirs, ours = _pair(fam, case, bias, backend)
    torch.manual_seed(1)
    args = case.args(lambda make: fam.state(make, case.sizes[1]))
    t, _ = assert_same_outcome(lambda: theirs(*args), lambda: ours(*args),
                               compare=assert_same_layout)
    assert (t.error is not None) == expect_error, f"nn.{fam.nn_cls.__name__} {t.describe()}"


def _matrix(cases: list) -> list:
    """(family, case, bias, backend) for every case that applies to the family."""
    return [backend_param(fam, b, fam, case, bias, b,
                          id=f"{fam}-{case.name}-{'bias' if bias else 'nobias'}-{b}")
            for fam in CELLS for case in cases if fam.has_c or not case.lstm_only
            for bias in (True, False) if bias or not case.needs_bias(fam)
            for b in fam.backends()]


@pytest.mark.parametrize("fam,case,bias,backend", _matrix(VALID))
def test_accepted_calls_match_nn_cell(fam, case, bias, backend):
    _check(fam, case, bias, backend, expect_error=False)


@pytest.mark.parametrize("fam,case,bias,backend", _matrix(REJECTED))
def test_rejected_calls_fail_like_nn_cell(fam, case, bias, backend):
    _check(fam, case, bias, backend, expect_error=True)


@pytest.mark.parametrize("fam", family_params(CELLS))
def test_unbatched_input_with_square_hx_is_rejected(fam):
    """A known difference: for 1-D input nn's cells unsqueeze hx, so a 2-D hx of shape
    [hidden_size, hidden_size] passes their checks and then nn.GRUCell fails inside its
    kernel (a broadcasting RuntimeError; with hidden_size 1 it crashes the process),
    nn.RNNCell broadcasts it into an [H, H] "state", and nn.LSTMCell crashes the process
    (so it is not called here). gru_torch raises a RuntimeError that says what is wrong."""
    square = fam.state(lambda w: torch.randn(w, w), 2)
    if fam.nn_cls is nn.GRUCell:
        with pytest.raises(RuntimeError, match="must match the size"):
            fam.nn_cls(I, 2)(torch.randn(I), square)
    elif fam.nn_cls is nn.RNNCell:
        assert fam.nn_cls(I, 2, **fam.kw)(torch.randn(I), square).shape == (2, 2)
    for size in (1, 2):
        with pytest.raises(RuntimeError, match=r"hx must be 1-D \[hidden_size\] for 1-D input"):
            fam.ours_cls(I, size, **fam.kw)(torch.randn(I),
                                            fam.state(lambda w: torch.randn(w, w), size))


# ---------------------------------------------------------------- the module itself
@pytest.mark.parametrize("fam", family_params(CELLS))
def test_state_dict_repr_and_conversions_like_nn(fam):
    for bias in (True, False):
        torch.manual_seed(2)
        theirs = fam.nn_cls(I, H, bias=bias, **fam.kw)
        ours = fam.ours_cls(I, H, bias=bias, **fam.kw)
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())
        back = ours.to_torch()
        assert type(back) is fam.nn_cls and back.bias == bias
        assert getattr(back, "nonlinearity", None) == getattr(theirs, "nonlinearity", None)
        for k, v in theirs.state_dict().items():
            assert torch.equal(back.state_dict()[k], v)
        same = fam.ours_cls.from_torch(theirs.eval())
        assert same.training is False and torch.equal(same.weight_hh, theirs.weight_hh)
        assert getattr(same, "nonlinearity", None) == getattr(theirs, "nonlinearity", None)
    other = LSTM_CELL if fam is not LSTM_CELL else GRU_CELL
    with pytest.raises(TypeError, match=f"nn.{fam.nn_cls.__name__}"):
        fam.ours_cls.from_torch(other.nn_cls(I, H))


def test_gru_cell_reset_after_false_has_no_nn_counterpart():
    assert "reset_after=False" in repr(gru_torch.GRUCell(I, H, reset_after=False))
    with pytest.raises(ValueError, match="reset_after=False"):
        gru_torch.GRUCell(I, H, reset_after=False).to_torch()


@pytest.mark.parametrize("fam", family_params(CELLS[1:]))
def test_single_bias_converts_to_nn_with_a_zero_bias_hh(fam):
    """LSTMCell and RNNCell with Keras's one bias compute what nn's cell computes with that
    bias as bias_ih and zeros as bias_hh."""
    torch.manual_seed(3)
    ours = fam.ours_cls(I, H, dtype=F64, single_bias=True, **fam.kw)
    assert ours.bias_hh is None and "single_bias=True" in repr(ours)
    theirs = ours.to_torch()
    assert torch.equal(theirs.bias_hh, torch.zeros_like(ours.bias_ih))
    x, hx = rand(B, I), fam.state(h(B), H)
    assert_same_layout(theirs(x, hx), ours(x, hx))


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="gru_torch extension not built")
def test_auto_runs_a_step_through_the_fused_op(record_backend):
    cell = gru_torch.GRUCell(I, H, dtype=F64)
    x, hx = rand(B, I), rand(B, H)
    out = cell(x, hx)
    assert record_backend.last == "fused"
    _, expected = ops.gru_layer(x[None], hx[None], cell.weight_ih[None], cell.weight_hh[None],
                                cell.bias_ih[None], cell.bias_hh[None], None, None, True)
    assert torch.equal(out.detach(), expected[0].detach())


@pytest.mark.parametrize("backend", keras_capable_backends())
def test_reset_after_false_step_equals_the_keras_gru_layer(backend):
    """A GRUCell(reset_after=False) looped over a sequence computes what
    gru_torch.GRU(reset_after=False) computes, and loads the same Keras weights."""
    torch.manual_seed(3)
    gen = np.random.default_rng(0)
    keras_weights = [gen.normal(size=(I, 3 * H)), gen.normal(size=(H, 3 * H)), gen.normal(size=(3 * H,))]
    layer = gru_torch.GRU(I, H, dtype=F64, reset_after=False, backend="reference")
    cell = gru_torch.GRUCell(I, H, dtype=F64, reset_after=False, backend=backend)
    layer.load_keras_weights(keras_weights)
    cell.load_keras_weights(keras_weights)
    assert cell.bias_hh is None
    x, state = rand(6, B, I), rand(B, H)
    out, h_n = layer(x, state[None])
    for t in range(6):
        state = cell(x[t], state)
        torch.testing.assert_close(state, out[t], rtol=0, atol=1e-12)
    torch.testing.assert_close(state, h_n[0], rtol=0, atol=1e-12)


def dropout_params(per_gate: bool = False) -> list:
    """(family, backend, masks) for the cells' recurrent dropout, which nn's cells lack:
    the GRU's on the backends that implement it (the fused op has one mask for every
    gate), the others' on the reference and on "auto" (which falls back to it)."""
    params = []
    for f in CELLS:
        for b in keras_capable_backends() if f.fused else ["reference", "auto"]:
            for m in ("shared", "per_gate") if per_gate and b != "fused" else ("shared",):
                params.append(pytest.param(f, b, m, id=f"{f}-{b}-{m}"))
    return params


def _steps(cell, x, state, **kw):
    """The cell over x's steps; the last state and every h."""
    hs = []
    for t in range(x.shape[0]):
        state = cell(x[t], state, **kw)
        hs.append(state[0] if isinstance(state, tuple) else state)
    return state, torch.stack(hs)


@pytest.mark.filterwarnings("ignore:gru_torch. falling back to the slow reference loop")
@pytest.mark.parametrize("fam,backend,masks", dropout_params(per_gate=True))
def test_recurrent_dropout_one_mask_per_sequence(fam, backend, masks):
    """A loop that passes one recurrent_mask to every step computes what the layer op
    computes with that mask for the whole sequence (Keras's semantics)."""
    torch.manual_seed(4)
    cell = fam.ours_cls(I, H, dtype=F64, recurrent_dropout=0.4, dropout_masks=masks,
                        backend=backend, **fam.kw)
    mask = cell.recurrent_dropout_mask(B)
    M = cell.cell.gates if masks == "per_gate" else 1
    assert mask.shape == ((B, H) if M == 1 else (B, M, H))
    assert set(mask.unique().tolist()) <= {0.0, 1 / 0.6}
    x, state = rand(5, B, I), fam.state(h(B), H)
    h0, c0 = (state if fam.has_c else (state, None))
    layer_mask = (mask.unsqueeze(1) if M == 1 else mask)[None]  # [D, B, M, H]
    out, _, c_n = gru_torch.reference.rnn_layer_reference(
        cell.cell, x, h0[None], None if c0 is None else c0[None], cell.weight_ih[None],
        cell.weight_hh[None], cell.bias_ih[None], cell.bias_hh[None], None, None, layer_mask,
        None)
    last, hs = _steps(cell, x, state, recurrent_mask=mask)
    torch.testing.assert_close(hs, out, rtol=0, atol=1e-12)
    if fam.has_c:
        torch.testing.assert_close(last[1], c_n[0], rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:gru_torch. falling back to the slow reference loop")
@pytest.mark.parametrize("fam,backend,masks", dropout_params())
def test_recurrent_dropout_fresh_mask_per_call_in_training_only(fam, backend, masks):
    torch.manual_seed(5)
    cell = fam.ours_cls(I, H, dtype=F64, recurrent_dropout=0.5, dropout_masks=masks,
                        backend=backend, **fam.kw)
    plain = fam.ours_cls(I, H, dtype=F64, backend=backend, **fam.kw)
    plain.load_state_dict(cell.state_dict())
    x, hx = rand(8, I), fam.state(h(8), H)
    first, second = cell(x, hx), cell(x, hx)
    differ = (lambda a, b: not torch.equal(a[0], b[0])) if fam.has_c else \
        (lambda a, b: not torch.equal(a, b))
    assert differ(first, second), "a fresh mask per call: two calls should differ"
    assert differ(first, plain(x, hx))
    cell.eval()
    mask = cell.recurrent_dropout_mask(8)
    for out in (cell(x, hx), cell(x, hx, recurrent_mask=mask)):
        assert_same_layout(plain(x, hx), out)  # eval ignores recurrent dropout and masks
    cell.train()
    unbatched_mask = cell.recurrent_dropout_mask()
    assert unbatched_mask.shape == (H,)
    one = cell(x[0], fam.state(h(), H), recurrent_mask=unbatched_mask)
    assert (one[0] if fam.has_c else one).shape == (H,)


@pytest.mark.parametrize("fam", family_params(CELLS))
def test_recurrent_mask_checked(fam):
    cell = fam.ours_cls(I, H, **fam.kw)
    with pytest.raises(ValueError, match="recurrent_mask must have the state's shape"):
        cell(torch.randn(B, I), recurrent_mask=torch.ones(B + 1, H))
    with pytest.raises(ValueError, match="recurrent_mask"):
        cell(torch.randn(I), recurrent_mask=torch.ones(1, H))
    with pytest.raises(TypeError, match="recurrent_mask must be a Tensor"):
        cell(torch.randn(B, I), recurrent_mask=[1.0] * H)
    assert torch.equal(cell.train().recurrent_dropout_mask(2), torch.ones(2, H))


@pytest.mark.parametrize("fam", family_params(CELLS))
def test_forced_cudnn_backend_cannot_run_what_nn_lacks(fam):
    if fam is GRU_CELL:
        with pytest.raises(RuntimeError, match="reset_after=False"):
            gru_torch.GRUCell(I, H, reset_after=False, backend="cudnn")(torch.randn(B, I))
    elif fam is LSTM_CELL:
        with pytest.raises(RuntimeError, match="hard_sigmoid_keras2"):
            gru_torch.LSTMCell(I, H, recurrent_activation="hard_sigmoid_keras2",
                               backend="cudnn")(torch.randn(B, I))
    cell = fam.ours_cls(I, H, recurrent_dropout=0.3, backend="cudnn", **fam.kw)
    with pytest.raises(RuntimeError, match="recurrent dropout"):
        cell(torch.randn(B, I))
    out = cell.eval()(torch.randn(B, I))
    assert (out[0] if fam.has_c else out).shape == (B, H)
