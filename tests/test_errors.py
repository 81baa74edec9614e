"""Bad arguments raise errors whose messages name the argument at fault.

The exception types are nn.GRU's (tests/test_contract_*.py compare them side by side);
here the detail gru_torch adds, and gru_torch's own arguments (lengths)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gru_torch
from conftest import available_backends

T, B, I, H = 5, 3, 3, 4
DT = torch.float64


@pytest.fixture(params=available_backends())
def gru(request):
    torch.manual_seed(0)
    return gru_torch.GRU(I, H, num_layers=2, dtype=DT, backend=request.param)


def x_ok(**kw):
    return torch.randn(T, B, I, dtype=kw.pop("dtype", DT), **kw)


# ------------------------------------------------------------------ forward arguments
def test_valid_call_works(gru):
    out, h_n = gru(x_ok(), torch.zeros(2, B, H, dtype=DT), lengths=[5, 1, 3])
    assert out.shape == (T, B, H) and h_n.shape == (2, B, H)


def test_wrong_input_size(gru):
    with pytest.raises(RuntimeError, match=r"input\.size\(-1\) must be equal to input_size"):
        gru(torch.randn(T, B, I + 1, dtype=DT))


@pytest.mark.parametrize("shape", [(2, B + 1, H), (3, B, H), (2, B, H + 1), (2, H), (B, H)])
def test_hx_wrong_shape(gru, shape):
    with pytest.raises(RuntimeError, match="hx"):
        gru(x_ok(), torch.zeros(*shape, dtype=DT))


def test_hx_3d_with_unbatched_input(gru):
    with pytest.raises(RuntimeError, match="hx should also be 2-D"):
        gru(torch.randn(T, I, dtype=DT), torch.zeros(2, 1, H, dtype=DT))


def test_hx_not_a_tensor(gru):
    with pytest.raises(AttributeError, match="hx must be a Tensor, got list"):
        gru(x_ok(), [[0.0] * H] * B)


def test_input_dtype_mismatch(gru):
    with pytest.raises(ValueError, match=r"input dtype \(torch.float32\) does not match"):
        gru(x_ok(dtype=torch.float32))


def test_hx_dtype_mismatch(gru):
    with pytest.raises(RuntimeError, match="hx dtype torch.float32 does not match"):
        gru(x_ok(), torch.zeros(2, B, H, dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input(gru, dtype):
    with pytest.raises(ValueError, match="dtype"):
        gru(torch.zeros(T, B, I, dtype=dtype))


@pytest.mark.parametrize("shape", [(I,), (1, T, B, I)])
def test_input_wrong_rank(gru, shape):
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D"):
        gru(torch.zeros(*shape, dtype=DT))


def test_input_not_a_tensor(gru):
    with pytest.raises(AttributeError, match="input .*must be a Tensor"):
        gru([[0.0] * I] * T)


def test_input_without_time_steps(gru):
    with pytest.raises(RuntimeError, match="no time steps"):
        gru(torch.zeros(0, B, I, dtype=DT))


@pytest.mark.parametrize("bad", [0, T + 1, -1])
def test_lengths_out_of_range(gru, bad):
    x = torch.randn(T, 1, I, dtype=DT)
    with pytest.raises(ValueError, match="lengths"):
        gru(x, lengths=torch.tensor([bad]))
    # one bad row among good ones is caught as well
    with pytest.raises(ValueError, match="lengths"):
        gru(x_ok(), lengths=torch.tensor([T, bad, 1]))


@pytest.mark.parametrize("lengths", [[T, T], [T, T, T, T], [[T, T, T]]])
def test_lengths_wrong_batch_size(gru, lengths):
    with pytest.raises(ValueError, match="lengths"):
        gru(x_ok(), lengths=torch.tensor(lengths))


@pytest.mark.parametrize("lengths", [torch.tensor([2.0, 3.0, 5.0]), [2.0, 3.0, 5.0],
                                     torch.tensor([True, True, True])])
def test_lengths_not_integers(gru, lengths):
    with pytest.raises(TypeError, match="lengths.*integer"):
        gru(x_ok(), lengths=lengths)


def test_lengths_not_convertible(gru):
    with pytest.raises(TypeError, match="lengths"):
        gru(x_ok(), lengths=object())


def test_lengths_batch_first(gru):
    """lengths counts batch rows, which are dim 0 with batch_first."""
    g = gru_torch.GRU(I, H, batch_first=True, dtype=DT, backend=gru.backend)
    x = torch.randn(B, T, I, dtype=DT)
    out, _ = g(x, lengths=[T, 2, 1])
    assert out.shape == (B, T, H)
    with pytest.raises(ValueError, match="lengths"):
        g(x, lengths=[1] * T)


def test_lengths_with_packed_sequence(gru):
    packed = pack_padded_sequence(x_ok(), torch.tensor([5, 3, 2]), enforce_sorted=False)
    with pytest.raises(ValueError, match="lengths.*PackedSequence"):
        gru(packed, lengths=torch.tensor([5, 3, 2]))


def test_input_on_other_device(gru):
    """Without a GPU, the "meta" device stands in for another device."""
    with pytest.raises(RuntimeError, match="input tensor at meta and parameter tensor at cpu"):
        gru(torch.empty(T, B, I, dtype=DT, device="meta"))


def test_hx_on_other_device(gru):
    with pytest.raises(RuntimeError, match="hidden tensor at meta"):
        gru(x_ok(), torch.empty(2, B, H, dtype=DT, device="meta"))


# ------------------------------------------------------------------ constructor
@pytest.mark.parametrize("name,value,error", [
    ("input_size", 0, ValueError), ("hidden_size", 0, ValueError), ("hidden_size", -3, ValueError),
    ("hidden_size", 2.5, TypeError), ("input_size", "3", TypeError), ("num_layers", 0, ValueError),
    ("num_layers", 1.5, TypeError), ("bias", "yes", TypeError), ("batch_first", "False", TypeError),
    ("bidirectional", 1, TypeError), ("reset_after", 0, TypeError)])
def test_constructor_arguments_named(name, value, error):
    kwargs = {"input_size": I, "hidden_size": H, "num_layers": 1, name: value}
    with pytest.raises(error, match=name):
        gru_torch.GRU(**kwargs)


@pytest.mark.parametrize("value,error", [(-0.1, ValueError), (1.5, ValueError), ("0.1", ValueError),
                                         (None, TypeError), (float("nan"), ValueError)])
def test_dropout_range(value, error):
    with pytest.raises(error, match=r"dropout must be a number in \[0, 1\]"):
        gru_torch.GRU(I, H, num_layers=2, dropout=value)


@pytest.mark.parametrize("value", [-0.1, 1.01])
def test_recurrent_dropout_range(value):
    with pytest.raises(ValueError, match="^recurrent_dropout"):
        gru_torch.GRU(I, H, recurrent_dropout=value)


@pytest.mark.parametrize("value", ["cuda", "nn", "", "FUSED", None])
def test_unknown_backend(value):
    with pytest.raises(ValueError, match="backend"):
        gru_torch.GRU(I, H, backend=value)


def test_constructor_accepts_boundaries():
    g = gru_torch.GRU(1, 1, num_layers=2, dropout=1.0, recurrent_dropout=1.0)
    assert g.dropout == 1.0 and g.recurrent_dropout == 1.0
    for b in gru_torch.BACKENDS:
        assert gru_torch.GRU(1, 1, backend=b).backend == b
