"""The CPU op's thread split (csrc/cpu_split.h): which split a call picks, and that every
split, thread count and batch size gives the float64 reference's result."""
import itertools
import os
import subprocess
import sys

import pytest
import torch

import gru_torch
from gru_torch import ops
from gru_torch.reference import gru_layer_reference

from test_ops import make_args

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="gru_torch extension not built")


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and restores it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def split(B, I, H):
    by_rows, threads, chunk_rows, chunks = torch.ops.gru_torch.cpu_split(B, I, H)
    return ("rows" if by_rows else "columns", threads, chunk_rows, chunks)


def test_split_by_rows_gives_each_thread_several_chunks(threads, monkeypatch):
    monkeypatch.delenv("GRU_TORCH_CPU_SPLIT", raising=False)
    threads(2)
    assert split(512, 50, 100) == ("rows", 2, 32, 16)   # capped at 32 rows a chunk
    assert split(32, 128, 128) == ("rows", 2, 8, 4)     # 4 chunks a thread, 8 rows each
    assert split(100, 1, 50) == ("rows", 2, 16, 7)      # the last chunk holds 4 rows
    threads(1)
    assert split(32, 128, 128) == ("rows", 1, 32, 1)    # one thread: nothing to rebalance


def test_split_few_rows_by_columns_or_one_thread(threads, monkeypatch):
    monkeypatch.delenv("GRU_TORCH_CPU_SPLIT", raising=False)
    threads(2)
    assert split(8, 128, 128) == ("columns", 2, 8, 1)   # 8 rows < 2 threads * 8
    assert split(1, 1, 50) == ("rows", 1, 1, 1)         # too little work to share
    assert split(15, 4, 4) == ("rows", 1, 15, 1)


def test_split_can_be_forced(threads, monkeypatch):
    threads(2)
    monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", "columns")
    assert split(512, 50, 100)[:2] == ("columns", 2)
    monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", "rows")
    assert split(8, 128, 128) == ("rows", 1, 8, 1)
    monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", "rows:5")
    assert split(12, 4, 4) == ("rows", 2, 5, 3)
    for bad in ("diagonal", "rows:0", "rows:x"):
        monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", bad)
        with pytest.raises(RuntimeError, match="GRU_TORCH_CPU_SPLIT must be auto, rows, rows:N"):
            split(8, 128, 128)


def check_against_reference(args, atol=1e-12):
    """Forward and every gradient against the reference; atol for the output (gradients
    get 10x), loosened for large chaotic problems, whose float64 rounding grows."""
    args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.requires_grad
                 else a for a in args)
    out, h_n = ops.gru_layer(*args)
    ref_out, ref_h = gru_layer_reference(*args)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=atol)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=atol)
    g = torch.Generator().manual_seed(1)
    go = torch.randn(out.shape, generator=g, dtype=out.dtype)
    gh = torch.randn(h_n.shape, generator=g, dtype=out.dtype)
    leaves = [a for a in args[:6] if a is not None]
    grads = torch.autograd.grad((out * go).sum() + (h_n * gh).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * go).sum() + (ref_h * gh).sum(), leaves)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9 if atol > 1e-12 else 0, atol=10 * atol)


# B=1; B below the thread count; B of 21 = chunks of 8, 8 and 5 (a 4-row tile and a
# 1-row tail); H=13 and 17 leave partial vectors and panels; I=19 gives the input
# gradient's tiles (split by rows) panels of 2 and 3 vectors, the last one partial.
SHAPES = [(1, 4, 3, 5), (3, 6, 2, 13), (21, 9, 19, 13), (40, 3, 2, 17)]


@pytest.mark.parametrize("mode,n_threads", [("rows", 1), ("rows", 2), ("rows:5", 2), ("columns", 1),
                                             ("columns", 2)])
@pytest.mark.parametrize("B,T,I,H", SHAPES)
def test_every_split_matches_reference(mode, n_threads, B, T, I, H, threads, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", mode)
    threads(n_threads)
    for reset_after, D, mask, lengths in itertools.product([True, False], [1, 2], [False, True],
                                                           [False, True]):
        check_against_reference(make_args(T=T, B=B, I=I, H=H, D=D, reset_after=reset_after,
                                          mask=mask, lengths=lengths))


def test_rows_split_is_deterministic(threads, monkeypatch):
    """Chunks are claimed by whichever thread is free, but their weight gradients are summed
    in chunk order: two runs give the same bits."""
    monkeypatch.delenv("GRU_TORCH_CPU_SPLIT", raising=False)
    threads(2)
    args = make_args(T=30, B=64, I=16, H=24, D=2, lengths=True, dtype=torch.float32)

    def grads():
        out, h_n = ops.gru_layer(*args)
        return torch.autograd.grad(out.square().sum() + h_n.sum(), [a for a in args[:6]])

    first, second = grads(), grads()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_reused_buffers_of_changing_length_are_rewritten():
    """The buffer cache hands a longer call's buffers to shorter ones; every element of
    the output, reserve and input gradient must be written again (float64 buffers of
    several MiB, so that they come from the cache). A stale element would be off by O(1)."""
    for T in (40, 25, 33, 12, 40):
        check_against_reference(make_args(T=T, B=64, I=24, H=72, D=2, lengths=True, seed=T),
                                atol=1e-9)


POOL_OFF_SCRIPT = """
import torch, sys
sys.path.insert(0, {tests!r})
from test_cpu_split import check_against_reference, make_args
for T in (30, 17, 30):
    check_against_reference(make_args(T=T, B=64, I=24, H=72, D=2, lengths=True, seed=T),
                            atol=1e-9)
print("ok")
"""


def test_pool_off_matches_reference():
    env = {**os.environ, "GRU_TORCH_CPU_POOL_MB": "0"}
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", POOL_OFF_SCRIPT.format(tests=tests)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("reset_after", [True, False])
def test_strided_input_and_expanded_output_gradient(reset_after):
    """batch_first input reaches the op transposed, and loss = out.sum() gives it an
    expanded gradient; the kernels read both in place."""
    x, hx, w_ih, w_hh, b_ih, b_hh, mask, lens, ra = make_args(
        T=7, B=10, I=5, H=9, D=2, reset_after=reset_after, mask=True, lengths=True)
    x_bf = x.detach().transpose(0, 1).contiguous().requires_grad_()  # [B, T, I]
    args = (x_bf.transpose(0, 1), hx, w_ih, w_hh, b_ih, b_hh, mask, lens, ra)
    assert args[0].stride(2) == 1 and not args[0].is_contiguous()
    leaves = [x_bf] + [a for a in args[1:6] if a is not None]
    out, h_n = ops.gru_layer(*args)
    ref_out, ref_h = gru_layer_reference(*args)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    # the output's gradient: ones, expanded
    grads = torch.autograd.grad(out.sum(), leaves, retain_graph=True)
    ref_grads = torch.autograd.grad(ref_out.sum(), leaves, retain_graph=True)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)
    grads = torch.autograd.grad(h_n.square().sum(), leaves)  # no output gradient at all
    ref_grads = torch.autograd.grad(ref_h.square().sum(), leaves)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)
