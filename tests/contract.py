"""Side-by-side checks: the same call on a torch.nn module and on its gru_torch
counterpart must end the same way.

Where torch.nn raises, gru_torch must raise the same exception type, with torch.nn's
message contained in its own (gru_torch may add detail after it). Where torch.nn returns,
gru_torch must return results that agree: same types, shapes, dtypes, devices and, for
data on a real device, the same values.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import gru_torch
from conftest import available_backends

# Every backend agrees with nn's module to ~1e-16 in float64; in float32 the operations run
# in another order, so a few ulps of the state's O(1) values differ.
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class Outcome:
    value: object = None
    error: BaseException | None = None
    warnings: list = field(default_factory=list)

    def describe(self) -> str:
        if self.error is not None:
            return f"raised {type(self.error).__name__}: {self.error}"
        return f"returned {type(self.value).__name__}"


def run(fn) -> Outcome:
    """Calls fn(), recording what it returns or raises and the warnings it emits."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn()
        except Exception as e:  # the outcome under test, compared by the caller
            return Outcome(error=e, warnings=list(caught))
    return Outcome(value=value, warnings=list(caught))


def assert_same_error(theirs: BaseException, ours: BaseException) -> None:
    assert type(ours) is type(theirs), (
        f"torch.nn raised {type(theirs).__name__}: {theirs}\n"
        f"gru_torch raised {type(ours).__name__}: {ours}")
    assert str(theirs) in str(ours), (
        f"gru_torch's message does not contain torch.nn's.\n"
        f"torch.nn:  {theirs}\ngru_torch: {ours}")


def assert_same_values(theirs, ours, what: str = "result", atol: float | None = None) -> None:
    """Recursively: tuples/lists, PackedSequence, tensors (type, shape, dtype, device,
    requires_grad, values), and anything else by equality."""
    if isinstance(theirs, PackedSequence):
        assert isinstance(ours, PackedSequence), f"{what}: {type(ours).__name__} is not a PackedSequence"
        for name in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
            assert_same_values(getattr(theirs, name), getattr(ours, name), f"{what}.{name}", atol)
        return
    if isinstance(theirs, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(theirs), (
            f"{what}: {type(ours).__name__} of {len(ours)} vs {type(theirs).__name__} of {len(theirs)}")
        for i, (t, o) in enumerate(zip(theirs, ours)):
            assert_same_values(t, o, f"{what}[{i}]", atol)
        return
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{what}: {type(ours).__name__} is not a Tensor"
        assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
        assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != {theirs.dtype}"
        assert ours.device == theirs.device, f"{what}: device {ours.device} != {theirs.device}"
        assert ours.requires_grad == theirs.requires_grad, f"{what}: requires_grad differs"
        if theirs.device.type != "meta":
            tol = ATOL.get(theirs.dtype, 0.0) if atol is None else atol
            torch.testing.assert_close(ours.detach(), theirs.detach(), atol=tol, rtol=0,
                                       equal_nan=True, msg=lambda m: f"{what}: {m}")
        return
    assert ours == theirs, f"{what}: {ours!r} != {theirs!r}"


def assert_same_layout(theirs, ours, what: str = "result") -> None:
    """Values as assert_same_values, and every tensor's strides too (code written for
    torch.nn may .view() an output, which works on nn's layout), except that a contiguous
    tensor may stand for one of nn's that follows a strided input's layout."""
    assert_same_values(theirs, ours, what)
    if isinstance(theirs, PackedSequence):
        theirs, ours = theirs.data, ours.data
    pairs = zip(theirs, ours) if isinstance(theirs, (tuple, list)) else [(theirs, ours)]
    for i, (t, o) in enumerate(pairs):
        if isinstance(t, (tuple, list, PackedSequence)):
            assert_same_layout(t, o, f"{what}[{i}]")
        elif isinstance(t, torch.Tensor) and t.numel() > 1:
            assert o.stride() == t.stride() or (o.is_contiguous() and not t.is_contiguous()), \
                f"{what}[{i}]: strides {o.stride()} != {t.stride()}"


def assert_same_outcome(theirs_fn, ours_fn, compare=assert_same_values) -> tuple[Outcome, Outcome]:
    """Runs both calls and asserts they end the same way; returns both outcomes."""
    theirs, ours = run(theirs_fn), run(ours_fn)
    if theirs.error is not None:
        assert ours.error is not None, (
            f"torch.nn {theirs.describe()}, but gru_torch {ours.describe()}")
        assert_same_error(theirs.error, ours.error)
    else:
        assert ours.error is None, (
            f"torch.nn {theirs.describe()}, but gru_torch {ours.describe()}")
        compare(theirs.value, ours.value)
    return theirs, ours


def warning_texts(outcome: Outcome, category=Warning) -> list[str]:
    """The warnings an outcome recorded, minus gru_torch's own backend notices."""
    return [str(w.message) for w in outcome.warnings
            if issubclass(w.category, category) and not str(w.message).startswith("gru_torch:")]


# ---------------------------------------------------------------- the family
@dataclass(frozen=True)
class Family:
    """One member of the recurrent family beside its torch.nn namesake: the contract
    suites run every check for each (see LAYERS and CELLS)."""
    id: str
    nn_cls: type
    ours_cls: type
    kwargs: tuple = ()  # extra constructor arguments, (name, value) pairs

    @property
    def kw(self) -> dict:
        return dict(self.kwargs)

    @property
    def has_c(self) -> bool:
        """An LSTM's: hx and h_n are (h, c) pairs."""
        return self.nn_cls in (nn.LSTM, nn.LSTMCell)

    @property
    def fused(self) -> bool:
        """Whether the fused op computes this cell: every one but the LSTM with projections."""
        return self.proj_size == 0

    @property
    def proj_size(self) -> int:
        return self.kw.get("proj_size", 0)

    def h_size(self, hidden_size: int) -> int:
        """The width of h (and of the output per direction)."""
        return self.proj_size or hidden_size

    def state(self, make, hidden_size: int):
        """hx as this family takes it: make(width) for h, and (h, make(H)) for an LSTM."""
        h = make(self.h_size(hidden_size))
        return (h, make(hidden_size)) if self.has_c else h

    def backends(self) -> list[str]:
        """The backends that must give nn's outcome: every one that runs on the CPU for
        a fused cell ("auto" is "fused" there); "reference", "cudnn" and "auto" (which falls
        back to nn's kernel) for the LSTM with projections, whose forced "fused" raises."""
        return available_backends() if self.fused else ["reference", "cudnn", "auto"]

    def pair(self, *args, backend: str = "auto", seed: int = 0, **kwargs):
        """nn's module, seeded, and gru_torch's with the same weights."""
        torch.manual_seed(seed)
        theirs = self.nn_cls(*args, **self.kw, **kwargs)
        return theirs, self.ours_cls.from_torch(theirs, backend=backend)

    def __str__(self) -> str:
        return self.id


GRU = Family("GRU", nn.GRU, gru_torch.GRU)
LSTM = Family("LSTM", nn.LSTM, gru_torch.LSTM)
LSTM_PROJ = Family("LSTM-proj", nn.LSTM, gru_torch.LSTM, (("proj_size", 2),))
RNN_TANH = Family("RNN-tanh", nn.RNN, gru_torch.RNN)
RNN_RELU = Family("RNN-relu", nn.RNN, gru_torch.RNN, (("nonlinearity", "relu"),))
LAYERS = [GRU, LSTM, LSTM_PROJ, RNN_TANH, RNN_RELU]
OTHER_LAYERS = LAYERS[1:]  # sampled more sparsely than the GRU where time would add up

GRU_CELL = Family("GRUCell", nn.GRUCell, gru_torch.GRUCell)
LSTM_CELL = Family("LSTMCell", nn.LSTMCell, gru_torch.LSTMCell)
RNN_CELL_TANH = Family("RNNCell-tanh", nn.RNNCell, gru_torch.RNNCell)
RNN_CELL_RELU = Family("RNNCell-relu", nn.RNNCell, gru_torch.RNNCell, (("nonlinearity", "relu"),))
CELLS = [GRU_CELL, LSTM_CELL, RNN_CELL_TANH, RNN_CELL_RELU]
LAYER_CELL = {GRU: GRU_CELL, LSTM: LSTM_CELL, LSTM_PROJ: LSTM_CELL, RNN_TANH: RNN_CELL_TANH,
              RNN_RELU: RNN_CELL_RELU}  # each layer's one step

FUSED_HAS_NO_PROJ = "the fused op has no LSTM projections"  # what forcing it there says


def family_params(families) -> list:
    return [pytest.param(f, id=f.id) for f in families]


# "auto" on a family the fused op does not compute warns once that it falls back
QUIET_FALLBACK = pytest.mark.filterwarnings("ignore:gru_torch. falling back to")


def backend_param(fam: Family, backend: str, *values, id: str) -> pytest.param:
    """pytest.param(*values) for a run of `fam` on `backend`, "auto"'s notice silenced."""
    marks = [QUIET_FALLBACK] if backend == "auto" and not fam.fused else []
    return pytest.param(*values, id=id, marks=marks)


def family_backends(families) -> list:
    """(family, backend) for every backend that must match nn."""
    return [backend_param(f, b, f, b, id=f"{f.id}-{b}") for f in families for b in f.backends()]
