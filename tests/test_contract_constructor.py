"""Constructor contract: every argument value, valid or not, built side by side with
nn.GRU / nn.GRUCell and gru_torch's counterpart. Same exception type and message
(contained), or modules with the same attributes, repr, parameters, state_dict,
initialization range and warnings."""
from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import gru_torch
from contract import assert_same_outcome, run, warning_texts

GRU_ATTRS = ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
             "dropout", "bidirectional", "proj_size", "training")
CELL_ATTRS = ("input_size", "hidden_size", "bias", "training")

# (argument, values): every value is tried on its own, the others at valid defaults
GRU_VALUES = {
    "input_size": [1, 3, 0, -1, 3.0, "10", None, True, np.int64(3), [3]],
    "hidden_size": [1, 4, 0, -3, 2.5, "4", None, True, np.int64(4), (4,)],
    "num_layers": [1, 3, 0, -1, 2.0, 2.5, "2", None, True, np.int64(2), float("nan")],
    "bias": [True, False, "True", 1, 0, None, np.bool_(True)],
    "batch_first": [True, False, "False", 1, 0, None, np.bool_(False)],
    "bidirectional": [True, False],
    "dropout": [0, 0.0, 0.3, 1, 1.0, -0.1, 1.5, "0.1", "abc", None, True, False,
                float("nan"), float("inf"), torch.tensor(0.2), np.float64(0.2), Fraction(1, 3),
                Decimal("0.25"), 1j, [0.1]],
    "proj_size": [0, 2, -1],
    "device": ["cpu", torch.device("cpu"), "meta", "bogus"],
    "dtype": [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
              torch.complex64],
}
CELL_VALUES = {
    "input_size": [1, 3, 0, -1, 3.0, "3", None, True, np.int64(3)],
    "hidden_size": [1, 4, 0, -2, 2.5, "4", None, True],
    "bias": [True, False, "x", 0, 1, None],
    "device": ["cpu", "meta", "bogus"],
    "dtype": [torch.float32, torch.float64, torch.float16, torch.int64],
}


def _cases(values: dict, extra_layers: bool) -> list:
    cases = []
    for name, vals in values.items():
        for v in vals:
            kwargs = {"input_size": 3, "hidden_size": 4, name: v}
            cases.append(pytest.param(kwargs, id=f"{name}={v!r}"))
            if extra_layers and name == "dropout":  # the one-layer warning, and none with two
                cases.append(pytest.param({**kwargs, "num_layers": 2}, id=f"{name}={v!r}-L2"))
    return cases


def _same_module(theirs: nn.Module, ours: nn.Module, attrs) -> None:
    for attr in attrs:
        t, o = getattr(theirs, attr), getattr(ours, attr)
        assert type(o) is type(t) and (o == t or (o != o and t != t)), f"{attr}: {o!r} != {t!r}"
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for k in theirs_sd:
        for prop in ("shape", "dtype", "device", "requires_grad"):
            assert getattr(ours_sd[k], prop) == getattr(theirs_sd[k], prop), f"{k}.{prop}"
    for (name, p_t), (_, p_o) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert type(p_o) is type(p_t) and p_o.requires_grad, name
    if next(ours.parameters()).device.type != "meta":
        bound = 1 / math.sqrt(theirs.hidden_size) if theirs.hidden_size > 0 else 0
        for name, p in ours.named_parameters():
            if p.numel() and p.is_floating_point():
                assert p.abs().max() <= bound, f"{name} outside nn's init range +-{bound}"


def _compare_gru(theirs, ours) -> None:
    _same_module(theirs, ours, GRU_ATTRS)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert ours._all_weights == theirs._all_weights
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
    assert [tuple(w.shape) for w in ours._flat_weights] == \
        [tuple(w.shape) for w in theirs._flat_weights]


def _compare_cell(theirs, ours) -> None:
    _same_module(theirs, ours, CELL_ATTRS)
    for name in ("bias_ih", "bias_hh"):
        assert (getattr(ours, name) is None) == (getattr(theirs, name) is None), name


@pytest.mark.parametrize("kwargs", _cases(GRU_VALUES, extra_layers=True))
def test_gru_constructor_like_nn(kwargs):
    theirs, ours = assert_same_outcome(lambda: nn.GRU(**kwargs), lambda: gru_torch.GRU(**kwargs),
                                       compare=_compare_gru)
    assert warning_texts(ours, UserWarning) == warning_texts(theirs, UserWarning)


@pytest.mark.parametrize("kwargs", _cases(CELL_VALUES, extra_layers=False))
def test_gru_cell_constructor_like_nn(kwargs):
    theirs, ours = assert_same_outcome(lambda: nn.GRUCell(**kwargs),
                                       lambda: gru_torch.GRUCell(**kwargs), compare=_compare_cell)
    assert warning_texts(ours, UserWarning) == warning_texts(theirs, UserWarning)


POSITIONAL = [(3, 4), (3, 4, 2), (3, 4, 2, False), (3, 4, 2, True, True),
              (3, 4, 2, True, False, 0.5), (3, 4, 2, True, False, 0.5, True)]


@pytest.mark.parametrize("args", POSITIONAL, ids=str)
def test_gru_positional_arguments_like_nn(args):
    assert_same_outcome(lambda: nn.GRU(*args), lambda: gru_torch.GRU(*args), compare=_compare_gru)


@pytest.mark.parametrize("args", [(3, 4), (3, 4, False), (3, 4, True)], ids=str)
def test_gru_cell_positional_arguments_like_nn(args):
    assert_same_outcome(lambda: nn.GRUCell(*args), lambda: gru_torch.GRUCell(*args),
                        compare=_compare_cell)


def _without_function_name(message: str) -> str:
    """Python names the function in its own signature errors: nn.GRU's is
    RNNBase.__init__, gru_torch's GRU.__init__. Compare what follows the name."""
    return re.sub(r"^\S+\(\) ", "", message)


@pytest.mark.parametrize("call", [
    ((), {}), ((3,), {}), ((3, 4), {"hidden_size": 5}), ((3, 4), {"foo": 1}),
    ((3, 4), {"nonlinearity": "tanh"}),
], ids=str)
@pytest.mark.parametrize("pair", [(nn.GRU, gru_torch.GRU), (nn.GRUCell, gru_torch.GRUCell)],
                         ids=["GRU", "GRUCell"])
def test_signature_errors_like_nn(call, pair):
    args, kwargs = call
    theirs, ours = run(lambda: pair[0](*args, **kwargs)), run(lambda: pair[1](*args, **kwargs))
    assert type(theirs.error) is TypeError and type(ours.error) is TypeError, (theirs, ours)
    assert _without_function_name(str(theirs.error)) == _without_function_name(str(ours.error))


def test_bidirectional_must_be_a_bool():
    """nn.GRU builds a module from any `bidirectional` and raises a TypeError from its
    kernel in the first forward; gru_torch raises the TypeError at construction, naming the
    argument, since a truthy string would otherwise build a second direction."""
    x = torch.randn(5, 2, 3)
    for value in ("False", 1, 0, None):
        theirs = run(lambda: nn.GRU(3, 4, bidirectional=value)(x))
        ours = run(lambda: gru_torch.GRU(3, 4, bidirectional=value))
        assert type(theirs.error) is TypeError and type(ours.error) is TypeError, value
        assert str(ours.error) == f"bidirectional should be of type bool, got: {type(value).__name__}"


# ---------------------------------------------------------------- gru_torch's own arguments
@pytest.mark.parametrize("cls", [gru_torch.GRU, gru_torch.GRUCell])
@pytest.mark.parametrize("name,value,error", [
    ("reset_after", "False", TypeError), ("reset_after", 1, TypeError),
    ("reset_after", None, TypeError),
    ("recurrent_dropout", -0.1, ValueError), ("recurrent_dropout", 1.5, ValueError),
    ("recurrent_dropout", "0.2", ValueError), ("recurrent_dropout", True, ValueError),
    ("recurrent_dropout", None, TypeError), ("recurrent_dropout", float("nan"), ValueError),
    ("backend", "cuda", ValueError), ("backend", "FUSED", ValueError), ("backend", None, ValueError),
])
def test_own_arguments_checked_in_nn_style(cls, name, value, error):
    with pytest.raises(error, match=re.escape(name)):
        cls(3, 4, **{name: value})


@pytest.mark.parametrize("cls", [gru_torch.GRU, gru_torch.GRUCell])
def test_own_arguments_accept_their_range(cls):
    for rate in (0, 0.5, 1, 1.0):
        assert cls(3, 4, recurrent_dropout=rate).recurrent_dropout == float(rate)
    for backend in gru_torch.BACKENDS:
        assert cls(3, 4, backend=backend).backend == backend
    assert cls(3, 4, reset_after=False).reset_after is False


def test_gru_reset_after_false_keeps_one_bias():
    mod = gru_torch.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False)
    assert all("bias_hh" not in n for n in mod._flat_weights_names)
    assert len(mod._all_weights) == 4 and all(len(ws) == 3 for ws in mod._all_weights)
    cell = gru_torch.GRUCell(3, 4, reset_after=False)
    assert cell.bias_hh is None and list(cell.state_dict()) == ["weight_ih", "weight_hh", "bias_ih"]
