"""The module around the forward, side by side with nn.GRU, nn.LSTM (with and without
proj_size) and nn.RNN (tanh and relu): conversions, serialization, reparametrizations,
functional calls, dropout and its randomness, train/eval."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from contract import GRU, LAYERS, assert_same_values, family_backends, family_params

T, B, I, H = 5, 3, 3, 4
DT = torch.float64
ATOL = 1e-10


def _pair(fam, backend, seed=0, **kw):
    return fam.pair(I, H, backend=backend, seed=seed, dtype=DT, **kw)


def _weights(fam) -> int:
    """How many weights one layer-direction has (weight_hr too with projections)."""
    return 4 + (fam.proj_size > 0)


def _x(batch_first=False):
    torch.manual_seed(1)
    return torch.randn(B, T, I, dtype=DT) if batch_first else torch.randn(T, B, I, dtype=DT)


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_pickle_deepcopy_and_state_dict_files(fam, backend):
    theirs, ours = _pair(fam, backend, num_layers=2, bidirectional=True)
    x = _x()
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    for copied in (torch.load(buf, weights_only=False), copy.deepcopy(ours)):
        assert type(copied) is fam.ours_cls and copied.backend == backend
        assert_same_values(theirs(x), copied(x), "copy", atol=ATOL)
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)  # nn's checkpoint, loaded with weights_only
    buf.seek(0)
    fresh = fam.ours_cls(I, H, 2, bidirectional=True, dtype=DT, backend=backend, **fam.kw)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert_same_values(theirs(x), fresh(x), "loaded", atol=ATOL)


@pytest.mark.filterwarnings("ignore:gru_torch. falling back to nn")
@pytest.mark.parametrize("convert", ["float", "double", "half", "bfloat16"])
@pytest.mark.parametrize("fam", family_params(LAYERS))
def test_dtype_conversions_like_nn(fam, convert, clear_warned):
    theirs, ours = fam.pair(I, H, 2, seed=2)
    theirs, ours = getattr(theirs, convert)(), getattr(ours, convert)()
    dtype = theirs.weight_ih_l0.dtype
    assert all(p.dtype == dtype for p in ours.parameters())
    x = torch.randn(T, B, I, dtype=dtype)
    atol = {torch.float64: ATOL, torch.float32: 1e-5}.get(dtype, 0.0)
    assert_same_values(theirs(x), ours(x), convert, atol=atol)


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_weight_norm_like_nn(fam, backend):
    """torch.nn.utils.weight_norm turns a weight into a computed tensor: nn's
    _flat_weights follow it, and so do gru_torch's."""
    theirs, ours = _pair(fam, backend, num_layers=2)
    for m in (theirs, ours):
        nn.utils.weight_norm(m, name="weight_hh_l1")
    assert [isinstance(w, nn.Parameter) for w in ours._flat_weights] == \
        [isinstance(w, nn.Parameter) for w in theirs._flat_weights]
    assert sum(isinstance(w, nn.Parameter) for w in ours._flat_weights) == 2 * _weights(fam) - 1
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


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_parametrization_like_nn(fam, backend):
    theirs, ours = _pair(fam, backend, bidirectional=True)
    for m in (theirs, ours):
        parametrize.register_parametrization(m, "weight_hh_l0_reverse", _Symmetric())
    x = _x()
    results = []
    for m in (theirs, ours):
        out, hidden = m(x)
        h_n = hidden[0] if fam.has_c else hidden
        original = m.parametrizations.weight_hh_l0_reverse.original
        results.append((out, hidden, torch.autograd.grad(out.sum() + h_n.sum(), original)))
    assert_same_values(results[0], results[1], "parametrized", atol=ATOL)


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_functional_call_like_nn(fam, backend):
    theirs, ours = _pair(fam, backend, num_layers=2, batch_first=True)
    params = {k: torch.randn_like(v) * 0.3 for k, v in theirs.named_parameters()}
    x = _x(batch_first=True)
    assert_same_values(functional_call(theirs, params, (x,)), functional_call(ours, params, (x,)),
                       "functional_call", atol=ATOL)


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_deleted_and_replaced_weight_like_nn(fam, backend):
    """nn's layers tolerate a weight deleted and set back as a plain tensor."""
    theirs, ours = _pair(fam, backend, num_layers=2)
    x = _x()
    for m in (theirs, ours):
        w = m.weight_hh_l0
        del m.weight_hh_l0
        assert not hasattr(m, "weight_hh_l0")
        m.weight_hh_l0 = w.detach() * 0.5
    assert_same_values(theirs(x), ours(x), "replaced weight", atol=ATOL)


@pytest.mark.parametrize("fam,backend", family_backends(LAYERS))
def test_dropout_draws_nns_masks(fam, backend):
    """Dropout between layers draws from the generator as nn's CPU kernel does: with
    the same seed the training outputs are identical. Changing `dropout` after
    construction takes effect, as in nn; eval() turns it off."""
    theirs, ours = _pair(fam, backend, num_layers=3, dropout=0.4)
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


@pytest.mark.filterwarnings("ignore:gru_torch. falling back to nn")
@pytest.mark.parametrize("fam", family_params(LAYERS))
def test_module_methods_nn_code_calls(fam):
    theirs, ours = _pair(fam, "auto", num_layers=2, bidirectional=True)
    ours.flatten_parameters()
    assert ours.mode == theirs.mode and ours.proj_size == theirs.proj_size
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
    ours.requires_grad_(False)
    assert not any(p.requires_grad for p in ours.parameters())
    calls = []
    ours.register_forward_hook(lambda mod, args, out: calls.append((len(args), len(out))))
    ours(_x())
    assert calls == [(1, 2)]


@pytest.mark.parametrize("fam", family_params(LAYERS))
def test_dropout_warning_for_one_layer(fam):
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fam.ours_cls(I, H, dropout=0.5, **fam.kw)


@pytest.mark.parametrize("fam", family_params(LAYERS))
def test_to_torch_and_from_torch_round_trip(fam):
    theirs, ours = _pair(fam, "auto", num_layers=2, bidirectional=True, batch_first=True)
    back = ours.eval().to_torch()
    assert type(back) is fam.nn_cls and repr(back) == repr(theirs) and not back.training
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    other = GRU if fam is not GRU else LAYERS[1]
    with pytest.raises(TypeError, match=f"nn.{fam.nn_cls.__name__}"):
        fam.ours_cls.from_torch(other.nn_cls(I, H))
