"""The module around the forward, side by side with nn.GRU: conversions, serialization,
reparametrizations, functional calls, dropout and its randomness, train/eval."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

import gru_torch
from conftest import available_backends
from contract import assert_same_values

T, B, I, H = 5, 3, 3, 4
DT = torch.float64
ATOL = 1e-10


def _pair(backend, seed=0, **kw):
    torch.manual_seed(seed)
    theirs = nn.GRU(I, H, dtype=DT, **kw)
    return theirs, gru_torch.GRU.from_torch(theirs, backend=backend)


def _x(batch_first=False):
    torch.manual_seed(1)
    return torch.randn(B, T, I, dtype=DT) if batch_first else torch.randn(T, B, I, dtype=DT)


@pytest.mark.parametrize("backend", available_backends())
def test_pickle_deepcopy_and_state_dict_files(backend):
    theirs, ours = _pair(backend, num_layers=2, bidirectional=True)
    x = _x()
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    for copied in (torch.load(buf, weights_only=False), copy.deepcopy(ours)):
        assert type(copied) is gru_torch.GRU and copied.backend == backend
        assert_same_values(theirs(x), copied(x), "copy", atol=ATOL)
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)  # nn.GRU's checkpoint, loaded with weights_only
    buf.seek(0)
    fresh = gru_torch.GRU(I, H, 2, bidirectional=True, dtype=DT, backend=backend)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert_same_values(theirs(x), fresh(x), "loaded", atol=ATOL)


@pytest.mark.filterwarnings("ignore:gru_torch. falling back to nn.GRU")
@pytest.mark.parametrize("convert", ["float", "double", "half", "bfloat16"])
def test_dtype_conversions_like_nn(convert, clear_warned):
    torch.manual_seed(2)
    theirs = nn.GRU(I, H, 2)
    ours = gru_torch.GRU.from_torch(theirs)
    theirs, ours = getattr(theirs, convert)(), getattr(ours, convert)()
    dtype = theirs.weight_ih_l0.dtype
    assert all(p.dtype == dtype for p in ours.parameters())
    x = torch.randn(T, B, I, dtype=dtype)
    atol = {torch.float64: ATOL, torch.float32: 1e-5}.get(dtype, 0.0)
    assert_same_values(theirs(x), ours(x), convert, atol=atol)


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize("backend", available_backends())
def test_weight_norm_like_nn(backend):
    """torch.nn.utils.weight_norm turns a weight into a computed tensor: nn.GRU's
    _flat_weights follow it, and so do gru_torch's."""
    theirs, ours = _pair(backend, num_layers=2)
    for m in (theirs, ours):
        nn.utils.weight_norm(m, name="weight_hh_l1")
    assert [isinstance(w, nn.Parameter) for w in ours._flat_weights] == \
        [isinstance(w, nn.Parameter) for w in theirs._flat_weights]
    assert sum(isinstance(w, nn.Parameter) for w in ours._flat_weights) == 7
    with torch.no_grad():
        for m in (theirs, ours):
            m.weight_hh_l1_g.mul_(1.5)
    x = _x()
    assert_same_values(theirs(x), ours(x), "with weight_norm", atol=ATOL)
    for m in (theirs, ours):
        nn.utils.remove_weight_norm(m, name="weight_hh_l1")
    assert all(isinstance(w, nn.Parameter) for w in ours._flat_weights)
    assert list(ours.state_dict()) == list(theirs.state_dict())


class _Symmetric(nn.Module):
    def forward(self, w):
        return (w + w.flip(-1)) / 2


@pytest.mark.parametrize("backend", available_backends())
def test_parametrization_like_nn(backend):
    theirs, ours = _pair(backend, bidirectional=True)
    for m in (theirs, ours):
        parametrize.register_parametrization(m, "weight_hh_l0_reverse", _Symmetric())
    x = _x()
    results = []
    for m in (theirs, ours):
        out, h_n = m(x)
        original = m.parametrizations.weight_hh_l0_reverse.original
        results.append((out, h_n, torch.autograd.grad(out.sum() + h_n.sum(), original)))
    assert_same_values(results[0], results[1], "parametrized", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
def test_functional_call_like_nn(backend):
    theirs, ours = _pair(backend, num_layers=2, batch_first=True)
    params = {k: torch.randn_like(v) * 0.3 for k, v in theirs.named_parameters()}
    x = _x(batch_first=True)
    assert_same_values(functional_call(theirs, params, (x,)), functional_call(ours, params, (x,)),
                       "functional_call", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
def test_deleted_and_replaced_weight_like_nn(backend):
    """nn.GRU tolerates a weight deleted and set back as a plain tensor."""
    theirs, ours = _pair(backend, num_layers=2)
    x = _x()
    for m in (theirs, ours):
        w = m.weight_hh_l0
        del m.weight_hh_l0
        assert not hasattr(m, "weight_hh_l0")
        m.weight_hh_l0 = w.detach() * 0.5
    assert_same_values(theirs(x), ours(x), "replaced weight", atol=ATOL)


@pytest.mark.parametrize("backend", available_backends())
def test_dropout_draws_nn_grus_masks(backend):
    """Dropout between layers draws from the generator as nn.GRU's CPU kernel does: with
    the same seed the training outputs are identical. Changing `dropout` after
    construction takes effect, as in nn.GRU; eval() turns it off."""
    theirs, ours = _pair(backend, num_layers=3, dropout=0.4)
    x = _x()
    for p in (0.4, 0.0, 1.0, 0.7):
        theirs.dropout = ours.dropout = p
        torch.manual_seed(3)
        expected = theirs(x)
        torch.manual_seed(3)
        assert_same_values(expected, ours(x), f"dropout={p}", atol=ATOL)
    first, second = ours(x), ours(x)
    assert not torch.equal(first[0], second[0]), "fresh masks on every training call"
    theirs.eval(), ours.eval()
    assert_same_values(theirs(x), ours(x), "eval", atol=ATOL)


def test_module_methods_nn_code_calls():
    theirs, ours = _pair("auto", num_layers=2, bidirectional=True)
    ours.flatten_parameters()
    assert ours.mode == "GRU" and ours.proj_size == 0
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
    ours.requires_grad_(False)
    assert not any(p.requires_grad for p in ours.parameters())
    calls = []
    ours.register_forward_hook(lambda mod, args, out: calls.append((len(args), len(out))))
    ours(_x())
    assert calls == [(1, 2)]


def test_dropout_warning_for_one_layer():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        gru_torch.GRU(I, H, dropout=0.5)
