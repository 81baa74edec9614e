"""Forward contract of gru_torch.GRU: every call below goes to nn.GRU and to gru_torch.GRU
(each backend) with the same weights and arguments. Where nn.GRU raises, gru_torch raises
the same exception type with nn.GRU's message in its own; where nn.GRU returns, gru_torch
returns the same outputs (float64, to 1e-10), types, shapes, dtypes and devices."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gru_torch
from conftest import available_backends
from contract import assert_same_layout, assert_same_outcome

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


def rand(*shape, dtype=F64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


def x_of(c: Config, t=T, b=B, i=I, **kw):
    return rand(b, t, i, **kw) if c.batch_first else rand(t, b, i, **kw)


def hx_of(c: Config, b=B, **kw):
    return rand(c.layers, b, H, **kw)


def packed(c: Config, lengths=(4, 2, 3), sorted_=False, i=I, dtype=F64):
    lengths = sorted(lengths, reverse=True) if sorted_ else list(lengths)
    return pack_padded_sequence(rand(T, len(lengths), i, dtype=dtype), torch.tensor(lengths),
                                enforce_sorted=sorted_)


def packed_on_meta():
    return pack_padded_sequence(rand(T, B, I, device="meta"), torch.tensor([4, 3, 2]))


def non_contiguous(c: Config):
    x = (rand(I, B, T).permute(1, 2, 0) if c.batch_first else rand(B, T, I).transpose(0, 1))
    hx = rand(H, B, c.layers).permute(2, 1, 0)
    assert not x.is_contiguous() and not hx.is_contiguous()
    return x, hx


def expanded(c: Config):
    x = rand(1, 1, I).expand(B, T, I) if c.batch_first else rand(1, 1, I).expand(T, B, I)
    return x, rand(c.layers, 1, H).expand(c.layers, B, H)


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Config], tuple]
    module_dtype: torch.dtype = F64
    module_device: str = "cpu"
    applies: Callable[[Config], bool] = lambda c: True  # noqa: E731


VALID = [
    Case("batched", lambda c: (x_of(c),)),
    Case("batched_hx", lambda c: (x_of(c), hx_of(c))),
    Case("unbatched", lambda c: (rand(T, I),)),
    Case("unbatched_hx", lambda c: (rand(T, I), rand(c.layers, H))),
    Case("batch_of_one", lambda c: (x_of(c, b=1), hx_of(c, b=1))),
    Case("one_step", lambda c: (x_of(c, t=1), hx_of(c))),
    Case("one_step_one_row", lambda c: (x_of(c, t=1, b=1),)),
    Case("zero_batch", lambda c: (x_of(c, b=0),)),
    Case("zero_batch_hx", lambda c: (x_of(c, b=0), hx_of(c, b=0))),
    Case("non_contiguous", non_contiguous),
    Case("expanded", expanded),
    Case("input_requires_grad", lambda c: (x_of(c).requires_grad_(), hx_of(c))),
    Case("hx_requires_grad", lambda c: (x_of(c), hx_of(c).requires_grad_())),
    Case("packed_sorted", lambda c: (packed(c, sorted_=True),)),
    Case("packed_unsorted", lambda c: (packed(c),)),
    Case("packed_sorted_hx", lambda c: (packed(c, sorted_=True), hx_of(c))),
    Case("packed_unsorted_hx", lambda c: (packed(c), hx_of(c))),
    Case("packed_equal_lengths", lambda c: (packed(c, lengths=(4, 4, 4)), hx_of(c))),
    Case("packed_one_row", lambda c: (packed(c, lengths=(3,)), hx_of(c, b=1))),
    # nn.GRU selects hx's rows by the PackedSequence's sorted_indices, so extra rows pass
    Case("packed_unsorted_hx_extra_rows", lambda c: (packed(c), hx_of(c, b=B + 2))),
    Case("float32", lambda c: (x_of(c, dtype=F32), hx_of(c, dtype=F32)), module_dtype=F32),
    Case("meta", lambda c: (x_of(c, device="meta"), hx_of(c, device="meta")),
         module_device="meta"),
    Case("meta_no_hx", lambda c: (x_of(c, device="meta"),), module_device="meta"),
    Case("meta_unbatched", lambda c: (rand(T, I, device="meta"),), module_device="meta"),
]

REJECTED = [
    # input rank and type
    Case("input_0d", lambda c: (torch.tensor(1.0, dtype=F64),)),
    Case("input_1d", lambda c: (rand(I),)),
    Case("input_4d", lambda c: (rand(1, T, B, I),)),
    Case("input_5d", lambda c: (rand(1, 1, T, B, I),)),
    Case("input_list", lambda c: ([[0.0] * I] * T,)),
    Case("input_none", lambda c: (None,)),
    Case("input_ndarray", lambda c: (np.zeros((T, B, I)),)),
    Case("input_int", lambda c: (3,)),
    Case("input_tuple_of_tensors", lambda c: ((x_of(c),),)),
    # feature size
    Case("input_size_wrong", lambda c: (x_of(c, i=I + 1),)),
    Case("input_size_wrong_unbatched", lambda c: (rand(T, I + 1),)),
    Case("input_size_zero", lambda c: (x_of(c, i=0),)),
    Case("input_size_wrong_packed", lambda c: (packed(c, i=I + 1),)),
    # empty time axis
    Case("no_time_steps", lambda c: (x_of(c, t=0),)),
    Case("no_time_steps_hx", lambda c: (x_of(c, t=0), hx_of(c))),
    Case("no_time_steps_unbatched", lambda c: (rand(0, I),)),
    Case("no_time_steps_no_rows", lambda c: (x_of(c, t=0, b=0),)),
    Case("no_time_steps_bad_hx", lambda c: (x_of(c, t=0), hx_of(c, b=B + 1))),
    Case("no_time_steps_hx_meta", lambda c: (x_of(c, t=0), hx_of(c, device="meta"))),
    Case("no_time_steps_hx_dtype", lambda c: (x_of(c, t=0), hx_of(c, dtype=F32))),
    # input dtype
    Case("input_float32", lambda c: (x_of(c, dtype=F32),)),
    Case("input_float16", lambda c: (x_of(c, dtype=torch.float16),)),
    Case("input_int64", lambda c: (x_of(c).long(),)),
    Case("input_bool", lambda c: (x_of(c) > 0,)),
    Case("input_complex", lambda c: (x_of(c, dtype=torch.complex128),)),
    Case("input_float64_module_float32", lambda c: (x_of(c),), module_dtype=F32),
    Case("input_float32_packed", lambda c: (packed(c, dtype=F32),)),
    # hx rank
    Case("hx_1d", lambda c: (x_of(c), rand(H))),
    Case("hx_2d", lambda c: (x_of(c), rand(c.layers, H))),
    Case("hx_4d", lambda c: (x_of(c), rand(1, c.layers, B, H))),
    Case("unbatched_hx_1d", lambda c: (rand(T, I), rand(H))),
    Case("unbatched_hx_3d", lambda c: (rand(T, I), rand(c.layers, 1, H))),
    # hx shape
    Case("hx_layers_wrong", lambda c: (x_of(c), rand(c.layers + 1, B, H))),
    Case("hx_batch_more", lambda c: (x_of(c), hx_of(c, b=B + 1))),
    Case("hx_batch_fewer", lambda c: (x_of(c), hx_of(c, b=B - 1))),
    Case("hx_hidden_wrong", lambda c: (x_of(c), rand(c.layers, B, H + 1))),
    Case("hx_time_for_batch", lambda c: (x_of(c), hx_of(c, b=T))),
    Case("unbatched_hx_layers_wrong", lambda c: (rand(T, I), rand(c.layers + 1, H))),
    Case("unbatched_hx_hidden_wrong", lambda c: (rand(T, I), rand(c.layers, H - 1))),
    # hx dtype and type
    Case("hx_float32", lambda c: (x_of(c), hx_of(c, dtype=F32))),
    Case("hx_float16", lambda c: (x_of(c), hx_of(c, dtype=torch.float16))),
    Case("hx_int64", lambda c: (x_of(c), hx_of(c).long())),
    Case("hx_complex", lambda c: (x_of(c), hx_of(c, dtype=torch.complex128))),
    Case("hx_float64_module_float32", lambda c: (x_of(c, dtype=F32), hx_of(c)), module_dtype=F32),
    Case("hx_list", lambda c: (x_of(c), [[0.0] * H] * B)),
    Case("hx_tuple", lambda c: (x_of(c), (hx_of(c), hx_of(c)))),
    Case("hx_int", lambda c: (x_of(c), 0)),
    # devices (meta stands in for another device where no GPU is)
    Case("input_on_meta", lambda c: (x_of(c, device="meta"),)),
    Case("hx_on_meta", lambda c: (x_of(c), hx_of(c, device="meta"))),
    Case("both_on_meta", lambda c: (x_of(c, device="meta"), hx_of(c, device="meta"))),
    Case("module_on_meta", lambda c: (x_of(c), hx_of(c)), module_device="meta"),
    Case("hx_on_meta_and_float32", lambda c: (x_of(c), hx_of(c, dtype=F32, device="meta"))),
    # PackedSequence with a bad hx
    Case("packed_sorted_hx_batch_more", lambda c: (packed(c, sorted_=True), hx_of(c, b=B + 1))),
    Case("packed_unsorted_hx_batch_fewer", lambda c: (packed(c), hx_of(c, b=B - 1))),
    Case("packed_sorted_hx_2d", lambda c: (packed(c, sorted_=True), rand(c.layers, H))),
    Case("packed_unsorted_hx_2d", lambda c: (packed(c), rand(c.layers, H))),
    Case("packed_unsorted_hx_1d", lambda c: (packed(c), rand(H))),
    Case("packed_sorted_hx_list", lambda c: (packed(c, sorted_=True), [0.0])),
    Case("packed_unsorted_hx_list", lambda c: (packed(c), [0.0])),
    Case("packed_sorted_hx_meta", lambda c: (packed(c, sorted_=True), hx_of(c, device="meta"))),
    Case("packed_unsorted_hx_meta", lambda c: (packed(c), hx_of(c, device="meta"))),
    Case("packed_hx_float32", lambda c: (packed(c), hx_of(c, dtype=F32))),
    # (without biases nn.GRU runs this one; see test_packed_meta_data_without_bias)
    Case("packed_data_on_meta", lambda c: (packed_on_meta(),), applies=lambda c: c.bias),
    Case("packed_data_3d", lambda c: (PackedSequence(rand(9, 1, I), torch.tensor([3, 3, 2, 1])),)),
    # several faults at once: the one nn.GRU checks first wins
    Case("input_size_and_dtype", lambda c: (x_of(c, i=I + 1, dtype=F32),)),
    Case("input_4d_and_dtype", lambda c: (rand(1, T, B, I, dtype=F32),)),
    Case("hx_rank_and_input_dtype", lambda c: (x_of(c, dtype=F32), rand(c.layers, H))),
    Case("input_size_and_hx_shape", lambda c: (x_of(c, i=I + 1), hx_of(c, b=B + 1))),
    Case("hx_shape_and_dtype", lambda c: (x_of(c), hx_of(c, b=B + 1, dtype=F32))),
]


def _modules(c: Config, case: Case, backend: str):
    torch.manual_seed(0)
    kw = dict(num_layers=c.num_layers, bias=c.bias, batch_first=c.batch_first,
              bidirectional=c.bidirectional, dtype=case.module_dtype, device=case.module_device)
    theirs = nn.GRU(I, H, **kw)
    ours = gru_torch.GRU(I, H, **kw, backend=backend)
    if case.module_device != "meta":
        ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _check(c: Config, case: Case, backend: str, expect_error: bool):
    if not case.applies(c):
        pytest.skip(f"{case.name} does not apply to {c}")
    theirs, ours = _modules(c, case, backend)
    torch.manual_seed(1)
    args = case.args(c)
    t, o = assert_same_outcome(lambda: theirs(*args), lambda: ours(*args),
                               compare=assert_same_layout)
    assert (t.error is not None) == expect_error, (
        f"this case was listed as {'rejected' if expect_error else 'valid'}, "
        f"but nn.GRU {t.describe()}")


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("case", VALID, ids=lambda k: k.name)
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=str)
def test_accepted_calls_match_nn_gru(config, case, backend):
    _check(config, case, backend, expect_error=False)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("case", REJECTED, ids=lambda k: k.name)
@pytest.mark.parametrize("config", ERROR_CONFIGS, ids=str)
def test_rejected_calls_fail_like_nn_gru(config, case, backend):
    _check(config, case, backend, expect_error=True)


def test_packed_meta_data_without_bias():
    """A known difference: nn.GRU without biases runs a PackedSequence whose data is on the
    meta device through weights on the CPU (its packed path checks no devices, and a
    matrix product of meta and CPU tensors passes), returning meta tensors; gru_torch
    rejects mixing devices there as everywhere else."""
    theirs = nn.GRU(I, H, bias=False, dtype=F64)
    out, h_n = theirs(packed_on_meta())
    assert out.data.device.type == "meta" and h_n.device.type == "meta"
    with pytest.raises(RuntimeError, match="data is on meta"):
        gru_torch.GRU.from_torch(theirs)(packed_on_meta())
