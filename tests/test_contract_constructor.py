"""Constructor contract: every argument value, valid or not, built side by side with
nn.GRU, nn.LSTM (with and without proj_size), nn.RNN (tanh and relu) and their cells and
gru_torch's counterparts. Same exception type and message (contained), or modules with
the same attributes, repr, parameters, state_dict, initialization range and warnings."""
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
from contract import (CELLS, LAYERS, LSTM, LSTM_CELL, RNN_CELL_TANH, RNN_TANH, assert_same_outcome,
                      family_params, run, warning_texts)

LAYER_ATTRS = ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
               "dropout", "bidirectional", "proj_size", "training", "nonlinearity")
CELL_ATTRS = ("input_size", "hidden_size", "bias", "training", "nonlinearity")

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
# the arguments of one family, tried on the family's base configuration
OWN_VALUES = {
    "LSTM": {"proj_size": [1, 3, 4, 5, 2.0, "2", None, True, False, np.int64(2)]},
    "RNN": {"nonlinearity": ["tanh", "relu", "sigmoid", "TANH", None, 1]},
    "RNNCell": {"nonlinearity": ["tanh", "relu", "sigmoid", None]},
}
CELL_VALUES = {
    "input_size": [1, 3, 0, -1, 3.0, "3", None, True, np.int64(3)],
    "hidden_size": [1, 4, 0, -2, 2.5, "4", None, True],
    "bias": [True, False, "x", 0, 1, None],
    "device": ["cpu", "meta", "bogus"],
    "dtype": [torch.float32, torch.float64, torch.float16, torch.int64],
}


def _cases(families, values: dict, extra_layers: bool) -> list:
    """(family, kwargs): every value of `values` and of the family's own arguments, the
    others at the family's defaults."""
    cases = []
    for fam in families:
        own = OWN_VALUES.get(fam.nn_cls.__name__, {})
        for name, vals in {**values, **own}.items():
            for v in vals:
                kwargs = {"input_size": 3, "hidden_size": 4, **fam.kw, name: v}
                cases.append(pytest.param(fam, kwargs, id=f"{fam}-{name}={v!r}"))
                if extra_layers and name == "dropout":  # the one-layer warning, none with two
                    cases.append(pytest.param(fam, {**kwargs, "num_layers": 2},
                                              id=f"{fam}-{name}={v!r}-L2"))
    return cases


def _same_module(theirs: nn.Module, ours: nn.Module, attrs) -> None:
    for attr in attrs:
        assert hasattr(ours, attr) == hasattr(theirs, attr), attr
        if not hasattr(theirs, attr):
            continue
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


def _compare_layer(theirs, ours) -> None:
    _same_module(theirs, ours, LAYER_ATTRS)
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


@pytest.mark.parametrize("fam,kwargs", _cases(LAYERS, GRU_VALUES, extra_layers=True))
def test_layer_constructor_like_nn(fam, kwargs):
    theirs, ours = assert_same_outcome(lambda: fam.nn_cls(**kwargs),
                                       lambda: fam.ours_cls(**kwargs), compare=_compare_layer)
    assert warning_texts(ours, UserWarning) == warning_texts(theirs, UserWarning)


@pytest.mark.parametrize("fam,kwargs", _cases(CELLS, CELL_VALUES, extra_layers=False))
def test_cell_constructor_like_nn(fam, kwargs):
    theirs, ours = assert_same_outcome(lambda: fam.nn_cls(**kwargs),
                                       lambda: fam.ours_cls(**kwargs), compare=_compare_cell)
    assert warning_texts(ours, UserWarning) == warning_texts(theirs, UserWarning)


POSITIONAL = [(3, 4), (3, 4, 2), (3, 4, 2, False), (3, 4, 2, True, True),
              (3, 4, 2, True, False, 0.5), (3, 4, 2, True, False, 0.5, True)]
# nn.LSTM's eighth positional argument is proj_size, nn.RNN's fourth its nonlinearity
OWN_POSITIONAL = {
    "LSTM": [(3, 4, 2, True, False, 0.5, True, 2), (3, 4, 1, True, False, 0.0, False, 4)],
    "RNN": [(3, 4, 2, "relu"), (3, 4, 2, "relu", False), (3, 4, 2, "tanh", True, True),
            (3, 4, 2, "relu", True, False, 0.5, True), (3, 4, 2, "sigmoid"), (3, 4, 2, True)],
}
CELL_POSITIONAL = [(3, 4), (3, 4, False), (3, 4, True)]
OWN_CELL_POSITIONAL = {"RNNCell": [(3, 4, True, "relu"), (3, 4, False, "x")]}


def _positional(families, common, own) -> list:
    return [pytest.param(fam, args, id=f"{fam.nn_cls.__name__}-{args}")
            for fam in families
            for args in common + own.get(fam.nn_cls.__name__, [])]


@pytest.mark.parametrize("fam,args", _positional([LAYERS[0], LSTM, RNN_TANH], POSITIONAL,
                                                 OWN_POSITIONAL))
def test_layer_positional_arguments_like_nn(fam, args):
    assert_same_outcome(lambda: fam.nn_cls(*args), lambda: fam.ours_cls(*args),
                        compare=_compare_layer)


@pytest.mark.parametrize("fam,args", _positional([CELLS[0], LSTM_CELL, RNN_CELL_TANH],
                                                 CELL_POSITIONAL, OWN_CELL_POSITIONAL))
def test_cell_positional_arguments_like_nn(fam, args):
    assert_same_outcome(lambda: fam.nn_cls(*args), lambda: fam.ours_cls(*args),
                        compare=_compare_cell)


def _without_function_name(message: str) -> str:
    """Python names the function in its own signature errors: nn.GRU's is
    RNNBase.__init__, gru_torch's GRU.__init__. Compare what follows the name."""
    return re.sub(r"^\S+\(\) ", "", message)


SIGNATURE_ERRORS = [((), {}), ((3,), {}), ((3, 4), {"hidden_size": 5}), ((3, 4), {"foo": 1}),
                    ((3, 4), {"nonlinearity": "tanh"})]


@pytest.mark.parametrize("fam,call", [
    pytest.param(fam, call, id=f"{fam.nn_cls.__name__}-{call}")
    for fam in [LAYERS[0], LSTM, RNN_TANH] + CELLS[:3] for call in SIGNATURE_ERRORS
    if "nonlinearity" not in call[1] or fam.nn_cls not in (nn.RNN, nn.RNNCell)])
def test_signature_errors_like_nn(fam, call):
    args, kwargs = call
    theirs = run(lambda: fam.nn_cls(*args, **kwargs))
    ours = run(lambda: fam.ours_cls(*args, **kwargs))
    assert type(theirs.error) is TypeError and type(ours.error) is TypeError, (theirs, ours)
    assert _without_function_name(str(theirs.error)) == _without_function_name(str(ours.error))


@pytest.mark.parametrize("fam", family_params(LAYERS))
def test_bidirectional_must_be_a_bool(fam):
    """nn's layers build a module from any `bidirectional` and raise a TypeError from
    their kernel in the first forward; gru_torch raises the TypeError at construction,
    naming the argument, since a truthy string would otherwise build a second direction."""
    x = torch.randn(5, 2, 3)
    for value in ("False", 1, 0, None):
        theirs = run(lambda: fam.nn_cls(3, 4, bidirectional=value, **fam.kw)(x))
        ours = run(lambda: fam.ours_cls(3, 4, bidirectional=value, **fam.kw))
        assert type(theirs.error) is TypeError and type(ours.error) is TypeError, value
        assert str(ours.error) == f"bidirectional should be of type bool, got: {type(value).__name__}"


# ---------------------------------------------------------------- gru_torch's own arguments
ALL_CLASSES = [gru_torch.GRU, gru_torch.LSTM, gru_torch.RNN, gru_torch.GRUCell, gru_torch.LSTMCell,
               gru_torch.RNNCell]
# which classes take which of gru_torch's own arguments
OWN_ARGUMENTS = {
    "reset_after": (gru_torch.GRU, gru_torch.GRUCell),
    "recurrent_activation": (gru_torch.GRU, gru_torch.GRUCell, gru_torch.LSTM, gru_torch.LSTMCell),
    "single_bias": (gru_torch.LSTM, gru_torch.RNN, gru_torch.LSTMCell, gru_torch.RNNCell),
    "input_dropout": (gru_torch.GRU, gru_torch.LSTM, gru_torch.RNN),
}
OWN_BAD_VALUES = [
    ("reset_after", "False", TypeError), ("reset_after", 1, TypeError),
    ("reset_after", None, TypeError),
    ("single_bias", "False", TypeError), ("single_bias", 1, TypeError),
    ("recurrent_activation", "hard_sigmoid", ValueError),
    ("recurrent_activation", "tanh", ValueError),
    ("recurrent_dropout", -0.1, ValueError), ("recurrent_dropout", 1.5, ValueError),
    ("recurrent_dropout", "0.2", ValueError), ("recurrent_dropout", True, ValueError),
    ("recurrent_dropout", None, TypeError), ("recurrent_dropout", float("nan"), ValueError),
    ("input_dropout", -0.1, ValueError), ("input_dropout", 1.5, ValueError),
    ("dropout_masks", "gate", ValueError),
    ("backend", "cuda", ValueError), ("backend", "FUSED", ValueError), ("backend", None, ValueError),
]


@pytest.mark.parametrize("cls,name,value,error", [
    pytest.param(cls, name, value, error, id=f"{cls.__name__}-{name}={value!r}")
    for cls in ALL_CLASSES for name, value, error in OWN_BAD_VALUES
    if cls in OWN_ARGUMENTS.get(name, ALL_CLASSES)])
def test_own_arguments_checked_in_nn_style(cls, name, value, error):
    with pytest.raises(error, match=re.escape(name)):
        cls(3, 4, **{name: value})


@pytest.mark.parametrize("cls,name", [
    pytest.param(cls, name, id=f"{cls.__name__}-{name}") for cls in ALL_CLASSES
    for name in ("reset_after", "single_bias", "input_dropout") if cls not in OWN_ARGUMENTS[name]])
def test_other_families_arguments_refused_like_unknown_ones(cls, name):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        cls(3, 4, **{name: False})


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_own_arguments_accept_their_range(cls):
    for rate in (0, 0.5, 1, 1.0):
        assert cls(3, 4, recurrent_dropout=rate).recurrent_dropout == float(rate)
    for backend in gru_torch.BACKENDS:
        assert cls(3, 4, backend=backend).backend == backend
    for masks in ("shared", "per_gate"):
        assert cls(3, 4, dropout_masks=masks).dropout_masks == masks
    if cls in OWN_ARGUMENTS["reset_after"]:
        assert cls(3, 4, reset_after=False).reset_after is False
    if cls in OWN_ARGUMENTS["recurrent_activation"]:
        for name in ("sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"):
            assert cls(3, 4, recurrent_activation=name).recurrent_activation == name


def test_gru_reset_after_false_keeps_one_bias():
    mod = gru_torch.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False)
    assert all("bias_hh" not in n for n in mod._flat_weights_names)
    assert len(mod._all_weights) == 4 and all(len(ws) == 3 for ws in mod._all_weights)
    cell = gru_torch.GRUCell(3, 4, reset_after=False)
    assert cell.bias_hh is None and list(cell.state_dict()) == ["weight_ih", "weight_hh", "bias_ih"]


@pytest.mark.parametrize("cls", [gru_torch.LSTM, gru_torch.RNN], ids=lambda c: c.__name__)
def test_single_bias_keeps_one_bias(cls):
    mod = cls(3, 4, num_layers=2, bidirectional=True, single_bias=True)
    assert all("bias_hh" not in n for n in mod._flat_weights_names)
    assert len(mod._all_weights) == 4 and all(len(ws) == 3 for ws in mod._all_weights)
    assert "single_bias=True" in repr(mod)
