"""Forward contract of the recurrent layers: every call below goes to nn.GRU, nn.LSTM
(with and without proj_size) and nn.RNN (tanh and relu) and to gru_torch's namesake
(each backend) with the same weights and arguments. Where nn raises, gru_torch raises the
same exception type with nn's message in its own; where nn returns, gru_torch returns
the same outputs (float64, to 1e-10), types, shapes, strides, dtypes and devices. An LSTM's
hx is (h0, c0); its faults are put in h0, and in c0 by the LSTM's own cases."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gru_torch
from contract import (FUSED_HAS_NO_PROJ, GRU, LAYERS, LSTM_PROJ, OTHER_LAYERS, Family, assert_same_layout,
                      assert_same_outcome, backend_param)

T, B, I, H = 4, 3, 3, 5
F64, F32 = torch.float64, torch.float32


@dataclass(frozen=True)
class Config:
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool

    @property
    def layers(self) -> int:  # num_layers * num_directions
        return self.num_layers * (2 if self.bidirectional else 1)

    def __str__(self):
        return (f"L{self.num_layers}-{'bi' if self.bidirectional else 'uni'}-"
                f"{'bf' if self.batch_first else 'tf'}-{'bias' if self.bias else 'nobias'}")


ALL_CONFIGS = [Config(*c) for c in itertools.product([1, 2], [False, True], [False, True],
                                                     [True, False])]
# every flag both ways, and each with the others at both values somewhere
ERROR_CONFIGS = [Config(1, False, False, True), Config(2, True, False, True),
                 Config(1, True, True, False), Config(2, False, True, True)]
# the other families: every flag both ways, in fewer combinations (their layers share
# the GRU's code but for the cell and the state)
SAMPLED_CONFIGS = [Config(1, False, False, True), Config(2, True, False, False),
                   Config(1, True, True, True), Config(2, False, True, False)]
SAMPLED_ERROR_CONFIGS = [Config(2, True, False, True), Config(1, False, True, False)]


def rand(*shape, dtype=F64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class Setup:
    """What a case builds its arguments from: the layer's configuration and family."""
    c: Config
    fam: Family

    @property
    def layers(self) -> int:
        return self.c.layers

    def x(self, t=T, b=B, i=I, **kw):
        return rand(b, t, i, **kw) if self.c.batch_first else rand(t, b, i, **kw)

    def state(self, make):
        """make(width) for h, and for an LSTM (h, make(H)): a fault in both."""
        return self.fam.state(make, H)

    def hx(self, b=B, layers=None, extra=0, **kw):
        layers = self.layers if layers is None else layers
        return self.state(lambda w: rand(layers, b, w + extra, **kw))

    def unbatched_hx(self, layers=None, extra=0):
        return self.state(lambda w: rand(self.layers if layers is None else layers, w + extra))

    def h_and_c(self, h=None, c=None):
        """An LSTM's (h0, c0), each well formed unless given."""
        good_h, good_c = self.hx()
        return (good_h if h is None else h, good_c if c is None else c)

    @property
    def P(self) -> int:
        return self.fam.h_size(H)

    def packed(self, lengths=(4, 2, 3), sorted_=False, i=I, dtype=F64):
        lengths = sorted(lengths, reverse=True) if sorted_ else list(lengths)
        return pack_padded_sequence(rand(T, len(lengths), i, dtype=dtype), torch.tensor(lengths),
                                    enforce_sorted=sorted_)

    def non_contiguous(self):
        x = (rand(I, B, T).permute(1, 2, 0) if self.c.batch_first
             else rand(B, T, I).transpose(0, 1))
        hx = self.state(lambda w: rand(w, B, self.layers).permute(2, 1, 0))
        assert not x.is_contiguous()
        return x, hx

    def expanded(self):
        x = rand(1, 1, I).expand(B, T, I) if self.c.batch_first else rand(1, 1, I).expand(T, B, I)
        return x, self.state(lambda w: rand(self.layers, 1, w).expand(self.layers, B, w))


def packed_on_meta():
    return pack_padded_sequence(rand(T, B, I, device="meta"), torch.tensor([4, 3, 2]))


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Setup], tuple]
    module_dtype: torch.dtype = F64
    module_device: str = "cpu"
    applies: Callable[[Setup], bool] = lambda k: True  # noqa: E731


def lstm_only(k: Setup) -> bool:
    return k.fam.has_c


VALID = [
    Case("batched", lambda k: (k.x(),)),
    Case("batched_hx", lambda k: (k.x(), k.hx())),
    Case("unbatched", lambda k: (rand(T, I),)),
    Case("unbatched_hx", lambda k: (rand(T, I), k.unbatched_hx())),
    Case("batch_of_one", lambda k: (k.x(b=1), k.hx(b=1))),
    Case("one_step", lambda k: (k.x(t=1), k.hx())),
    Case("one_step_one_row", lambda k: (k.x(t=1, b=1),)),
    Case("zero_batch", lambda k: (k.x(b=0),)),
    Case("zero_batch_hx", lambda k: (k.x(b=0), k.hx(b=0))),
    Case("non_contiguous", lambda k: k.non_contiguous()),
    Case("expanded", lambda k: k.expanded()),
    Case("input_requires_grad", lambda k: (k.x().requires_grad_(), k.hx())),
    Case("hx_requires_grad", lambda k: (k.x(), k.state(
        lambda w: rand(k.layers, B, w).requires_grad_()))),
    Case("packed_sorted", lambda k: (k.packed(sorted_=True),)),
    Case("packed_unsorted", lambda k: (k.packed(),)),
    Case("packed_sorted_hx", lambda k: (k.packed(sorted_=True), k.hx())),
    Case("packed_unsorted_hx", lambda k: (k.packed(), k.hx())),
    Case("packed_equal_lengths", lambda k: (k.packed(lengths=(4, 4, 4)), k.hx())),
    Case("packed_one_row", lambda k: (k.packed(lengths=(3,)), k.hx(b=1))),
    # nn selects hx's rows by the PackedSequence's sorted_indices, so extra rows pass
    Case("packed_unsorted_hx_extra_rows", lambda k: (k.packed(), k.hx(b=B + 2))),
    Case("float32", lambda k: (k.x(dtype=F32), k.hx(dtype=F32)), module_dtype=F32),
    Case("meta", lambda k: (k.x(device="meta"), k.hx(device="meta")), module_device="meta"),
    Case("meta_no_hx", lambda k: (k.x(device="meta"),), module_device="meta"),
    Case("meta_unbatched", lambda k: (rand(T, I, device="meta"),), module_device="meta"),
    # an LSTM's (h0, c0) as a list, and c0 alone needing a gradient
    Case("lstm_hx_list", lambda k: (k.x(), list(k.hx())), applies=lstm_only),
    # nn.LSTM leaves c0's dtype to its kernel, whose arithmetic promotes a float32 c0
    Case("lstm_cx_float32", lambda k: (k.x(), k.h_and_c(c=rand(k.layers, B, H, dtype=F32))),
         applies=lstm_only),
    Case("lstm_packed_cx_float32", lambda k: (k.packed(), k.h_and_c(
        c=rand(k.layers, B, H, dtype=F32))), applies=lstm_only),
    Case("lstm_cx_requires_grad", lambda k: (k.x(), k.h_and_c(
        c=rand(k.layers, B, H).requires_grad_())), applies=lstm_only),
]

REJECTED = [
    # input rank and type
    Case("input_0d", lambda k: (torch.tensor(1.0, dtype=F64),)),
    Case("input_1d", lambda k: (rand(I),)),
    Case("input_4d", lambda k: (rand(1, T, B, I),)),
    Case("input_5d", lambda k: (rand(1, 1, T, B, I),)),
    Case("input_list", lambda k: ([[0.0] * I] * T,)),
    Case("input_none", lambda k: (None,)),
    Case("input_ndarray", lambda k: (np.zeros((T, B, I)),)),
    Case("input_int", lambda k: (3,)),
    Case("input_tuple_of_tensors", lambda k: ((k.x(),),)),
    # feature size
    Case("input_size_wrong", lambda k: (k.x(i=I + 1),)),
    Case("input_size_wrong_unbatched", lambda k: (rand(T, I + 1),)),
    Case("input_size_zero", lambda k: (k.x(i=0),)),
    Case("input_size_wrong_packed", lambda k: (k.packed(i=I + 1),)),
    # empty time axis
    Case("no_time_steps", lambda k: (k.x(t=0),)),
    Case("no_time_steps_hx", lambda k: (k.x(t=0), k.hx())),
    Case("no_time_steps_unbatched", lambda k: (rand(0, I),)),
    Case("no_time_steps_no_rows", lambda k: (k.x(t=0, b=0),)),
    Case("no_time_steps_bad_hx", lambda k: (k.x(t=0), k.hx(b=B + 1))),
    Case("no_time_steps_hx_meta", lambda k: (k.x(t=0), k.hx(device="meta"))),
    Case("no_time_steps_hx_dtype", lambda k: (k.x(t=0), k.hx(dtype=F32))),
    # input dtype
    Case("input_float32", lambda k: (k.x(dtype=F32),)),
    Case("input_float16", lambda k: (k.x(dtype=torch.float16),)),
    Case("input_int64", lambda k: (k.x().long(),)),
    Case("input_bool", lambda k: (k.x() > 0,)),
    Case("input_complex", lambda k: (k.x(dtype=torch.complex128),)),
    Case("input_float64_module_float32", lambda k: (k.x(),), module_dtype=F32),
    Case("input_float32_packed", lambda k: (k.packed(dtype=F32),)),
    # hx rank
    Case("hx_1d", lambda k: (k.x(), k.state(lambda w: rand(w)))),
    Case("hx_2d", lambda k: (k.x(), k.unbatched_hx())),
    Case("hx_4d", lambda k: (k.x(), k.state(lambda w: rand(1, k.layers, B, w)))),
    Case("unbatched_hx_1d", lambda k: (rand(T, I), k.state(lambda w: rand(w)))),
    Case("unbatched_hx_3d", lambda k: (rand(T, I), k.hx(b=1))),
    # hx shape
    Case("hx_layers_wrong", lambda k: (k.x(), k.hx(layers=k.layers + 1))),
    Case("hx_batch_more", lambda k: (k.x(), k.hx(b=B + 1))),
    Case("hx_batch_fewer", lambda k: (k.x(), k.hx(b=B - 1))),
    Case("hx_hidden_wrong", lambda k: (k.x(), k.hx(extra=1))),
    Case("hx_time_for_batch", lambda k: (k.x(), k.hx(b=T))),
    Case("unbatched_hx_layers_wrong", lambda k: (rand(T, I), k.unbatched_hx(layers=k.layers + 1))),
    Case("unbatched_hx_hidden_wrong", lambda k: (rand(T, I), k.unbatched_hx(extra=-1))),
    # hx dtype and type
    Case("hx_float32", lambda k: (k.x(), k.hx(dtype=F32))),
    Case("hx_float16", lambda k: (k.x(), k.hx(dtype=torch.float16))),
    Case("hx_int64", lambda k: (k.x(), k.state(lambda w: rand(k.layers, B, w).long()))),
    Case("hx_complex", lambda k: (k.x(), k.hx(dtype=torch.complex128))),
    Case("hx_float64_module_float32", lambda k: (k.x(dtype=F32), k.hx()), module_dtype=F32),
    Case("hx_list", lambda k: (k.x(), [[0.0] * H] * B)),
    Case("hx_tuple", lambda k: (k.x(), (k.hx(), k.hx()))),
    Case("hx_int", lambda k: (k.x(), 0)),
    # devices (meta stands in for another device where no GPU is)
    Case("input_on_meta", lambda k: (k.x(device="meta"),)),
    Case("hx_on_meta", lambda k: (k.x(), k.hx(device="meta"))),
    Case("both_on_meta", lambda k: (k.x(device="meta"), k.hx(device="meta"))),
    Case("module_on_meta", lambda k: (k.x(), k.hx()), module_device="meta"),
    Case("hx_on_meta_and_float32", lambda k: (k.x(), k.hx(dtype=F32, device="meta"))),
    # PackedSequence with a bad hx
    Case("packed_sorted_hx_batch_more", lambda k: (k.packed(sorted_=True), k.hx(b=B + 1))),
    Case("packed_unsorted_hx_batch_fewer", lambda k: (k.packed(), k.hx(b=B - 1))),
    Case("packed_sorted_hx_2d", lambda k: (k.packed(sorted_=True), k.unbatched_hx())),
    Case("packed_unsorted_hx_2d", lambda k: (k.packed(), k.unbatched_hx())),
    Case("packed_unsorted_hx_1d", lambda k: (k.packed(), k.state(lambda w: rand(w)))),
    Case("packed_sorted_hx_list", lambda k: (k.packed(sorted_=True), [0.0])),
    Case("packed_unsorted_hx_list", lambda k: (k.packed(), [0.0])),
    # (nn.LSTM and nn.RNN without biases run these; see test_packed_meta_data_without_bias)
    Case("packed_sorted_hx_meta", lambda k: (k.packed(sorted_=True), k.hx(device="meta")),
         applies=lambda k: k.c.bias or k.fam is GRU),
    Case("packed_unsorted_hx_meta", lambda k: (k.packed(), k.hx(device="meta")),
         applies=lambda k: k.c.bias or k.fam is GRU),
    Case("packed_hx_float32", lambda k: (k.packed(), k.hx(dtype=F32))),
    # (without biases nn runs this one; see test_packed_meta_data_without_bias)
    Case("packed_data_on_meta", lambda k: (packed_on_meta(),), applies=lambda k: k.c.bias),
    Case("packed_data_3d", lambda k: (PackedSequence(rand(9, 1, I), torch.tensor([3, 3, 2, 1])),)),
    # several faults at once: the one nn checks first wins
    Case("input_size_and_dtype", lambda k: (k.x(i=I + 1, dtype=F32),)),
    Case("input_4d_and_dtype", lambda k: (rand(1, T, B, I, dtype=F32),)),
    Case("hx_rank_and_input_dtype", lambda k: (k.x(dtype=F32), k.unbatched_hx())),
    Case("input_size_and_hx_shape", lambda k: (k.x(i=I + 1), k.hx(b=B + 1))),
    Case("hx_shape_and_dtype", lambda k: (k.x(), k.hx(b=B + 1, dtype=F32))),
    # an LSTM's state: not a pair, or a fault in c0 alone
    Case("lstm_hx_one_tensor", lambda k: (k.x(), k.hx()[0]), applies=lstm_only),
    Case("lstm_hx_one_tuple", lambda k: (k.x(), k.hx()[:1]), applies=lstm_only),
    Case("lstm_hx_three", lambda k: (k.x(), (*k.hx(), k.hx()[1])), applies=lstm_only),
    Case("lstm_hx_swapped", lambda k: (k.x(), k.hx()[::-1]),
         applies=lambda k: k.fam.has_c and k.P != H),
    Case("lstm_cx_none", lambda k: (k.x(), (k.hx()[0], None)), applies=lstm_only),
    Case("lstm_cx_2d", lambda k: (k.x(), k.h_and_c(c=rand(k.layers, H))), applies=lstm_only),
    Case("lstm_cx_hidden_wrong", lambda k: (k.x(), k.h_and_c(c=rand(k.layers, B, H + 1))),
         applies=lstm_only),
    Case("lstm_cx_batch_more", lambda k: (k.x(), k.h_and_c(c=rand(k.layers, B + 1, H))),
         applies=lstm_only),
    Case("lstm_cx_on_meta", lambda k: (k.x(), k.h_and_c(c=rand(k.layers, B, H, device="meta"))),
         applies=lstm_only),
    Case("lstm_cx_float64_module_float32", lambda k: (k.x(dtype=F32), k.h_and_c(
        h=rand(k.layers, B, k.P, dtype=F32), c=rand(k.layers, B, H))), module_dtype=F32,
         applies=lstm_only),
    Case("lstm_unbatched_cx_3d", lambda k: (rand(T, I), (k.unbatched_hx()[0],
                                                          rand(k.layers, 1, H))),
         applies=lstm_only),
    Case("lstm_packed_cx_batch_fewer", lambda k: (k.packed(), k.h_and_c(
        c=rand(k.layers, B - 1, H))), applies=lstm_only),
    Case("lstm_packed_cx_hidden_wrong", lambda k: (k.packed(sorted_=True), k.h_and_c(
        c=rand(k.layers, B, H + 1))), applies=lstm_only),
    Case("lstm_packed_cx_on_meta", lambda k: (k.packed(), k.h_and_c(
        c=rand(k.layers, B, H, device="meta"))), applies=lstm_only),
]


def _modules(k: Setup, case: Case, backend: str):
    torch.manual_seed(0)
    kw = dict(num_layers=k.c.num_layers, bias=k.c.bias, batch_first=k.c.batch_first,
              bidirectional=k.c.bidirectional, dtype=case.module_dtype,
              device=case.module_device, **k.fam.kw)
    theirs = k.fam.nn_cls(I, H, **kw)
    ours = k.fam.ours_cls(I, H, **kw, backend=backend)
    if case.module_device != "meta":
        ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _check(fam: Family, c: Config, case: Case, backend: str, expect_error: bool):
    k = Setup(c, fam)
    theirs, ours = _modules(k, case, backend)
    torch.manual_seed(1)
    args = case.args(k)
    t, _ = assert_same_outcome(lambda: theirs(*args), lambda: ours(*args),
                               compare=assert_same_layout)
    assert (t.error is not None) == expect_error, (
        f"this case was listed as {'rejected' if expect_error else 'valid'}, "
        f"but nn.{fam.nn_cls.__name__} {t.describe()}")


def _matrix(configs: dict, cases: list) -> list:
    """(family, config, case, backend): the GRU's configurations in full, the others'
    sampled; cases that do not apply to a family are left out."""
    params = []
    for fam, fam_configs in configs.items():
        for case in cases:
            for c in fam_configs:
                if case.applies(Setup(c, fam)):
                    params += [backend_param(fam, b, fam, c, case, b,
                                             id=f"{fam}-{c}-{case.name}-{b}")
                               for b in fam.backends()]
    return params


VALID_MATRIX = _matrix({GRU: ALL_CONFIGS, **{f: SAMPLED_CONFIGS for f in OTHER_LAYERS}}, VALID)
REJECTED_MATRIX = _matrix({GRU: ERROR_CONFIGS, **{f: SAMPLED_ERROR_CONFIGS for f in OTHER_LAYERS}},
                          REJECTED)


@pytest.mark.parametrize("fam,config,case,backend", VALID_MATRIX)
def test_accepted_calls_match_nn(fam, config, case, backend):
    _check(fam, config, case, backend, expect_error=False)


@pytest.mark.parametrize("fam,config,case,backend", REJECTED_MATRIX)
def test_rejected_calls_fail_like_nn(fam, config, case, backend):
    _check(fam, config, case, backend, expect_error=True)


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="gru_torch extension not built")
@pytest.mark.parametrize("fam", [LSTM_PROJ], ids=str)
@pytest.mark.parametrize("case", [c for c in VALID if c.name in (
    "batched_hx", "unbatched", "packed_unsorted", "zero_batch", "float32", "meta")],
    ids=lambda k: k.name)
def test_forced_fused_backend_says_it_has_no_projections(fam, case):
    """The fused op has no LSTM projections: forced there, a call nn accepts raises a
    RuntimeError that says so (a call nn rejects fails as nn's does: the arguments are
    checked first)."""
    k = Setup(SAMPLED_CONFIGS[1], fam)
    theirs, ours = _modules(k, case, "fused")
    args = case.args(k)
    theirs(*args)
    with pytest.raises(RuntimeError, match=f"backend='fused' cannot run: {FUSED_HAS_NO_PROJ}"):
        ours(*args)
    bad = REJECTED[[c.name for c in REJECTED].index("hx_batch_more")]
    t, _ = assert_same_outcome(lambda: theirs(*bad.args(k)), lambda: ours(*bad.args(k)))
    assert t.error is not None


@pytest.mark.parametrize("fam", LAYERS, ids=str)
def test_packed_meta_data_without_bias(fam):
    """A known difference: nn's layers without biases run a PackedSequence whose data is
    on the meta device through weights on the CPU (their packed path checks no devices,
    and a matrix product of meta and CPU tensors passes), returning meta tensors, and so
    do nn.LSTM and nn.RNN with CPU data and hx on meta; gru_torch rejects mixing devices
    there as everywhere else."""
    theirs = fam.nn_cls(I, H, bias=False, dtype=F64, **fam.kw)
    ours = fam.ours_cls.from_torch(theirs)
    out, hidden = theirs(packed_on_meta())
    h_n = hidden[0] if fam.has_c else hidden
    assert out.data.device.type == "meta" and h_n.device.type == "meta"
    with pytest.raises(RuntimeError, match="data is on meta"):
        ours(packed_on_meta())
    if fam is not GRU:
        k = Setup(SAMPLED_CONFIGS[0], fam)
        packed, hx = k.packed(), k.hx(device="meta")
        assert theirs(packed, hx)[0].data.device.type == "meta"
        with pytest.raises(RuntimeError, match="is on meta"):
            ours(packed, hx)
