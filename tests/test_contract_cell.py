"""GRUCell contract: every call below goes to nn.GRUCell and to gru_torch.GRUCell (each
backend) with the same weights and arguments, and must end the same way; then
gru_torch.GRUCell's own features (reset_after, recurrent dropout, conversions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import gru_torch
from conftest import available_backends, keras_capable_backends
from contract import assert_same_layout, assert_same_outcome
from gru_torch import ops

B, I, H = 3, 4, 5
F64, F32 = torch.float64, torch.float32


def rand(*shape, dtype=F64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[], tuple]
    sizes: tuple = (I, H)
    module_dtype: torch.dtype = F64
    module_device: str = "cpu"
    # nn.GRUCell without biases multiplies meta and CPU tensors without complaint (and
    # returns values computed from weights that hold no data), so these mixtures are
    # errors only with biases; gru_torch runs them through nn.GRUCell's kernel as well.
    needs_bias: bool = False


VALID = [
    Case("batched", lambda: (rand(B, I), rand(B, H))),
    Case("batched_no_hx", lambda: (rand(B, I),)),
    Case("unbatched", lambda: (rand(I), rand(H))),
    Case("unbatched_no_hx", lambda: (rand(I),)),
    Case("batch_of_one", lambda: (rand(1, I), rand(1, H))),
    Case("zero_batch", lambda: (rand(0, I),)),
    Case("zero_batch_hx", lambda: (rand(0, I), rand(0, H))),
    Case("non_contiguous", lambda: (rand(I, B).t(), rand(H, B).t())),
    Case("expanded", lambda: (rand(1, I).expand(B, I), rand(1, H).expand(B, H))),
    Case("input_requires_grad", lambda: (rand(B, I).requires_grad_(), rand(B, H))),
    Case("float32", lambda: (rand(B, I, dtype=F32), rand(B, H, dtype=F32)), module_dtype=F32),
    Case("zero_hidden_size", lambda: (rand(B, I), rand(B, 0)), sizes=(I, 0)),
    Case("zero_input_size", lambda: (rand(B, 0), rand(B, H)), sizes=(0, H)),
    Case("meta", lambda: (rand(B, I, device="meta"), rand(B, H, device="meta")),
         module_device="meta"),
    Case("meta_unbatched_no_hx", lambda: (rand(I, device="meta"),), module_device="meta"),
]

REJECTED = [
    Case("input_0d", lambda: (torch.tensor(1.0, dtype=F64),)),
    Case("input_3d", lambda: (rand(1, B, I),)),
    Case("input_list", lambda: ([[0.0] * I] * B,)),
    Case("input_none", lambda: (None,)),
    Case("input_ndarray", lambda: (np.zeros((B, I)),)),
    Case("hx_0d", lambda: (rand(B, I), torch.tensor(0.0, dtype=F64))),
    Case("hx_3d", lambda: (rand(B, I), rand(1, B, H))),
    Case("hx_list", lambda: (rand(B, I), [[0.0] * H] * B)),
    Case("input_size_wrong", lambda: (rand(B, I + 1), rand(B, H))),
    Case("input_size_wrong_unbatched", lambda: (rand(I + 1), rand(H))),
    Case("input_size_wrong_no_hx", lambda: (rand(B, I + 1),)),
    Case("hidden_size_wrong", lambda: (rand(B, I), rand(B, H + 1))),
    Case("hidden_size_wrong_unbatched", lambda: (rand(I), rand(H - 1))),
    Case("batch_mismatch", lambda: (rand(B, I), rand(B + 1, H))),
    Case("hx_batch_of_one_not_broadcast", lambda: (rand(B, I), rand(1, H))),
    Case("batched_input_1d_hx", lambda: (rand(B, I), rand(H))),
    Case("batched_input_1d_hx_of_batch_length", lambda: (rand(H, I), rand(H))),
    Case("unbatched_input_2d_hx", lambda: (rand(I), rand(1, H))),
    Case("unbatched_input_2d_hx_rows", lambda: (rand(I), rand(2, H))),
    Case("input_float32", lambda: (rand(B, I, dtype=F32),)),
    Case("input_float32_hx_float64", lambda: (rand(B, I, dtype=F32), rand(B, H))),
    Case("hx_float32", lambda: (rand(B, I), rand(B, H, dtype=F32))),
    Case("input_int64", lambda: (rand(B, I).long(),)),
    Case("input_float64_module_float32", lambda: (rand(B, I),), module_dtype=F32),
    Case("hx_wrong_and_dtype", lambda: (rand(B, I, dtype=F32), rand(B, H + 1))),
    Case("input_on_meta", lambda: (rand(B, I, device="meta"),), needs_bias=True),
    Case("hx_on_meta", lambda: (rand(B, I), rand(B, H, device="meta"))),
    Case("module_on_meta", lambda: (rand(B, I), rand(B, H)), module_device="meta",
         needs_bias=True),
]


def _pair(case: Case, bias: bool, backend: str):
    torch.manual_seed(0)
    kw = dict(bias=bias, dtype=case.module_dtype, device=case.module_device)
    theirs = nn.GRUCell(*case.sizes, **kw)
    ours = gru_torch.GRUCell(*case.sizes, **kw, backend=backend)
    if case.module_device != "meta":
        ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _check(case: Case, bias: bool, backend: str, expect_error: bool):
    if case.needs_bias and not bias:
        pytest.skip("nn.GRUCell's outcome here is undefined without biases")
    theirs, ours = _pair(case, bias, backend)
    torch.manual_seed(1)
    args = case.args()
    t, _ = assert_same_outcome(lambda: theirs(*args), lambda: ours(*args),
                               compare=assert_same_layout)
    assert (t.error is not None) == expect_error, f"nn.GRUCell {t.describe()}"


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", VALID, ids=lambda k: k.name)
def test_accepted_calls_match_nn_gru_cell(case, bias, backend):
    _check(case, bias, backend, expect_error=False)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", REJECTED, ids=lambda k: k.name)
def test_rejected_calls_fail_like_nn_gru_cell(case, bias, backend):
    _check(case, bias, backend, expect_error=True)


def test_unbatched_input_with_square_hx_is_rejected():
    """A known difference: for 1-D input nn.GRUCell unsqueezes hx, so a 2-D hx of shape
    [hidden_size, hidden_size] passes its checks and fails inside its kernel (a
    broadcasting RuntimeError; with hidden_size 1 the process crashes). gru_torch raises
    a RuntimeError that says what is wrong."""
    with pytest.raises(RuntimeError, match="must match the size"):
        nn.GRUCell(I, 2)(torch.randn(I), torch.randn(2, 2))
    for h in (1, 2):
        with pytest.raises(RuntimeError, match=r"hx must be 1-D \[hidden_size\] for 1-D input"):
            gru_torch.GRUCell(I, h)(torch.randn(I), torch.randn(h, h))


# ---------------------------------------------------------------- the module itself
def test_state_dict_repr_and_conversions_like_nn():
    for bias in (True, False):
        torch.manual_seed(2)
        theirs = nn.GRUCell(I, H, bias=bias)
        ours = gru_torch.GRUCell(I, H, bias=bias)
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())
        back = ours.to_torch()
        assert isinstance(back, nn.GRUCell) and back.bias == bias
        for k, v in theirs.state_dict().items():
            assert torch.equal(back.state_dict()[k], v)
        same = gru_torch.GRUCell.from_torch(theirs.eval())
        assert same.training is False and torch.equal(same.weight_hh, theirs.weight_hh)
    assert "reset_after=False" in repr(gru_torch.GRUCell(I, H, reset_after=False))
    with pytest.raises(ValueError, match="reset_after=False"):
        gru_torch.GRUCell(I, H, reset_after=False).to_torch()
    with pytest.raises(TypeError, match="nn.GRUCell"):
        gru_torch.GRUCell.from_torch(nn.GRU(I, H))


@pytest.mark.skipif("fused" not in available_backends(), reason="gru_torch extension not built")
def test_auto_runs_a_step_through_the_fused_op(record_backend):
    cell = gru_torch.GRUCell(I, H, dtype=F64)
    x, hx = rand(B, I), rand(B, H)
    h = cell(x, hx)
    assert record_backend.last == "fused"
    _, expected = ops.gru_layer(x[None], hx[None], cell.weight_ih[None], cell.weight_hh[None],
                                cell.bias_ih[None], cell.bias_hh[None], None, None, True)
    assert torch.equal(h.detach(), expected[0].detach())


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
    x, h = rand(6, B, I), rand(B, H)
    out, h_n = layer(x, h[None])
    for t in range(6):
        h = cell(x[t], h)
        torch.testing.assert_close(h, out[t], rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_n[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", keras_capable_backends())
def test_recurrent_dropout_one_mask_per_sequence(backend):
    """A loop that passes one recurrent_mask to every step computes what the layer op
    computes with that mask for the whole sequence (Keras's semantics)."""
    torch.manual_seed(4)
    cell = gru_torch.GRUCell(I, H, dtype=F64, recurrent_dropout=0.4, backend=backend)
    mask = cell.recurrent_dropout_mask(B)
    assert mask.shape == (B, H) and set(mask.unique().tolist()) <= {0.0, 1 / 0.6}
    x, h = rand(5, B, I), rand(B, H)
    out, _ = gru_torch.gru_layer_reference(x, h[None], cell.weight_ih[None], cell.weight_hh[None],
                                           cell.bias_ih[None], cell.bias_hh[None], mask[None],
                                           None, True)
    for t in range(5):
        h = cell(x[t], h, recurrent_mask=mask)
        torch.testing.assert_close(h, out[t], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", keras_capable_backends())
def test_recurrent_dropout_fresh_mask_per_call_in_training_only(backend):
    torch.manual_seed(5)
    cell = gru_torch.GRUCell(I, H, dtype=F64, recurrent_dropout=0.5, backend=backend)
    plain = gru_torch.GRUCell(I, H, dtype=F64, backend=backend)
    plain.load_state_dict(cell.state_dict())
    x, hx = rand(8, I), rand(8, H)
    first, second = cell(x, hx), cell(x, hx)
    assert not torch.equal(first, second), "a fresh mask per call: two calls should differ"
    assert not torch.equal(first, plain(x, hx))
    cell.eval()
    mask = cell.recurrent_dropout_mask(8)
    for out in (cell(x, hx), cell(x, hx, recurrent_mask=mask)):
        assert torch.equal(out, plain(x, hx)), "eval ignores recurrent dropout and masks"
    cell.train()
    unbatched_mask = cell.recurrent_dropout_mask()
    assert unbatched_mask.shape == (H,)
    assert cell(x[0], hx[0], recurrent_mask=unbatched_mask).shape == (H,)


def test_recurrent_mask_checked():
    cell = gru_torch.GRUCell(I, H)
    with pytest.raises(ValueError, match="recurrent_mask must have the state's shape"):
        cell(torch.randn(B, I), recurrent_mask=torch.ones(B + 1, H))
    with pytest.raises(ValueError, match="recurrent_mask"):
        cell(torch.randn(I), recurrent_mask=torch.ones(1, H))
    with pytest.raises(TypeError, match="recurrent_mask must be a Tensor"):
        cell(torch.randn(B, I), recurrent_mask=[1.0] * H)
    assert torch.equal(cell.train().recurrent_dropout_mask(2), torch.ones(2, H))


def test_forced_cudnn_backend_cannot_run_keras_cell():
    with pytest.raises(RuntimeError, match="reset_after=False"):
        gru_torch.GRUCell(I, H, reset_after=False, backend="cudnn")(torch.randn(B, I))
    cell = gru_torch.GRUCell(I, H, recurrent_dropout=0.3, backend="cudnn")
    with pytest.raises(RuntimeError, match="recurrent dropout"):
        cell(torch.randn(B, I))
    assert cell.eval()(torch.randn(B, I)).shape == (B, H)
