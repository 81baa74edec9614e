"""Denormal numbers: the CPU op flushes them in float32 on every thread of a call, keeps
the caller's mode in float64, and leaves every thread's mode as it found it; the trainer
flushes them for the whole step unless told not to."""
from __future__ import annotations

import json
import statistics
import time

import pytest
import torch

import gru_torch
from gru_torch import denormals, ops
from gru_torch.reference import gru_layer_reference

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="gru_torch extension not built")

TINY32 = torch.finfo(torch.float32).tiny  # the smallest normal float32, about 1.2e-38
TINY64 = torch.finfo(torch.float64).tiny


@pytest.fixture(autouse=True)
def keep_modes():
    """Every test starts and ends with denormals kept on every thread."""
    denormals.set_modes([0])
    yield
    denormals.set_modes([0])


def has_subnormal(t: torch.Tensor) -> bool:
    tiny = torch.finfo(t.dtype).tiny
    return bool(((t != 0) & (t.abs() < tiny)).any())


def decaying_problem(dtype, T=300, B=16, I=8, H=32, seed=0):
    """A classifier's backward: loss on h_n only, inputs of an embedding's scale, so the
    gradient decays through the steps into the denormal range and past it."""
    g = torch.Generator().manual_seed(seed)
    s = H ** -0.5

    def u(*shape, scale=s):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    x = u(T, B, I, scale=0.05)
    params = [u(1, 3 * H, I), u(1, 3 * H, H), u(1, 3 * H), u(1, 3 * H)]
    return x, torch.zeros(1, B, H, dtype=dtype), params


def grads(layer_fn, x, h0, params):
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    ps = [p.clone().requires_grad_() for p in params]
    _, h_n = layer_fn(x, h0, *ps, None, None, True)
    h_n.sum().backward()
    return [x.grad, h0.grad] + [p.grad for p in ps]


def test_float32_backward_flushes_and_stays_within_tolerance():
    x, h0, params = decaying_problem(torch.float32)
    fused = grads(ops.gru_layer, x, h0, params)
    plain = grads(gru_layer_reference, x, h0, params)
    exact = grads(gru_layer_reference, x.double(), h0.double(), [p.double() for p in params])
    assert has_subnormal(plain[0]), "the problem must reach the denormal range unflushed"
    assert not any(has_subnormal(g) for g in fused), "the op's gradients hold denormals"
    for got, want in zip(fused, exact):  # what is flushed is below any tolerance
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_forward_reads_denormal_state_as_zero_in_float32_only():
    """With zero weights, h_n = h0 / 2; a denormal h0 reads as 0 in float32 (DAZ), and
    float64 keeps IEEE's denormals unless the caller flushes them."""
    for dtype, h, flushed in ((torch.float32, TINY32 / 4, True), (torch.float64, TINY64 / 4, False)):
        x = torch.zeros(3, 2, 1, dtype=dtype)
        hx = torch.full((1, 2, 4), h, dtype=dtype)
        w_ih, w_hh = torch.zeros(1, 12, 1, dtype=dtype), torch.zeros(1, 12, 4, dtype=dtype)
        _, h_n = ops.gru_layer(x, hx, w_ih, w_hh, None, None, None, None, True)
        want = torch.zeros_like(hx) if flushed else hx / 8
        assert torch.equal(h_n, want), (dtype, h_n, want)
        with denormals.flush_denormal():
            _, h_n = ops.gru_layer(x, hx, w_ih, w_hh, None, None, None, None, True)
        assert torch.equal(h_n, torch.zeros_like(hx)), f"{dtype}: the caller's flush is kept"


# How a call shares its loop (csrc/cpu_split.h): chunks of rows on both threads; the
# steps' panels by columns (a small batch, its weight gradients' GEMMs on MKL's threads);
# one thread's single chunk (the same GEMMs outside any region).
SPLITS = {"rows": ({"B": 40}, "auto"), "columns": ({"B": 8, "I": 64, "H": 128}, "auto"),
          "one chunk": ({"B": 8, "I": 64, "H": 128}, "rows")}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("caller_mode", [0, denormals.FLUSH, denormals.FLUSH_TO_ZERO])
def test_every_threads_mode_is_restored(dtype, caller_mode, split, monkeypatch):
    torch.set_num_threads(2)
    shape, env = SPLITS[split]
    monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", env)
    denormals.set_modes([caller_mode])
    before = denormals.modes()
    x, h0, params = decaying_problem(dtype, T=20, **shape)
    grads(ops.gru_layer, x, h0, params)
    assert denormals.modes() == before


def test_modes_are_restored_when_the_op_raises(monkeypatch):
    """The split is read inside the guarded loop: a bad one raises there."""
    for caller_mode in (0, denormals.FLUSH):
        denormals.set_modes([caller_mode])
        before = denormals.modes()
        x, h0, params = decaying_problem(torch.float32, T=5, B=40)
        monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", "sideways")
        with pytest.raises(RuntimeError, match="GRU_TORCH_CPU_SPLIT must be"):
            ops.gru_layer(x, h0, *params, None, None, True)
        monkeypatch.delenv("GRU_TORCH_CPU_SPLIT")
        assert denormals.modes() == before


def test_flush_denormal_sets_every_thread_and_restores():
    torch.set_num_threads(2)
    denormals.set_modes([0])
    with gru_torch.flush_denormal() as everywhere:
        assert everywhere and set(denormals.modes()) == {denormals.FLUSH}
        with gru_torch.flush_denormal(False):
            assert set(denormals.modes()) == {0}
        assert set(denormals.modes()) == {denormals.FLUSH}
    assert set(denormals.modes()) == {0}
    with pytest.raises(ValueError, match="boom"):
        with gru_torch.flush_denormal():
            raise ValueError("boom")
    assert set(denormals.modes()) == {0}
    with pytest.raises(TypeError, match="enabled must be a bool"):
        with gru_torch.flush_denormal("yes"):
            pass
    with pytest.raises(RuntimeError, match=r"a mode is in \[0, 3\]"):
        denormals.set_modes([4])


@pytest.mark.parametrize("split", list(SPLITS))
def test_backward_in_the_denormal_range_runs_at_the_flushed_speed(split, monkeypatch):
    """The same backward with the caller's default mode and with flush-to-zero set by the
    caller, alternated: the op flushes by itself, so their median ratio is about 1 (13x
    on the Intel Xeon development machine before the op flushed, 2.2x by columns before
    MKL's threads did; AMD cores barely notice)."""
    torch.set_num_threads(2)
    shape, env = SPLITS[split]
    monkeypatch.setenv("GRU_TORCH_CPU_SPLIT", env)
    x, h0, params = decaying_problem(torch.float32, T=200, **{"B": 64, "I": 16, "H": 64, **shape})
    ps = [p.requires_grad_() for p in params]

    def backward() -> float:
        _, h_n = ops.gru_layer(x, h0, *ps, None, None, True)
        t0 = time.perf_counter()
        h_n.sum().backward()
        return time.perf_counter() - t0

    backward()
    ratios = []
    for _ in range(9):
        plain = backward()
        with gru_torch.flush_denormal():
            flushed = backward()
        ratios.append(plain / flushed)
    assert statistics.median(ratios) < 1.5, ratios


def test_trainer_flushes_unless_told_not_to(tmp_path, monkeypatch):
    from gru_torch import cli, train

    seen = []
    real_pass = train._pass

    def spy(*args, **kwargs):
        seen.append(denormals.modes())
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(train, "_pass", spy)
    for flag, want in (([], denormals.FLUSH), (["--no-flush-denormal"], 0)):
        seen.clear()
        out = tmp_path / f"run{len(flag)}"
        assert cli.train_main(["--data", "sample", "--out", str(out), "--epochs", "1",
                               "--batch-size", "16", "--threads", "2", *flag]) == 0
        assert seen and all(set(m) == {want} for m in seen), seen
        assert json.loads((out / "config.json").read_text())["flush_denormal"] is (want != 0)
        assert set(denormals.modes()) == {0}, "the trainer restores the modes"


@pytest.mark.parametrize("caller_mode", [0, denormals.FLUSH, denormals.FLUSH_TO_ZERO])
def test_the_family_ops_restore_every_threads_mode(caller_mode):
    """family_layer and its backward (training), family_layer_x (inference): each
    thread's mode as the call found it."""
    torch.set_num_threads(2)
    denormals.set_modes([caller_mode])
    before = denormals.modes()
    torch.manual_seed(0)
    lstm = gru_torch.LSTM(8, 32, bidirectional=True, backend="fused")
    x = torch.randn(20, 40, 8) * 0.05
    _, (h_n, _) = lstm(x)
    h_n.sum().backward()
    assert denormals.modes() == before
    with torch.no_grad():
        lstm(x)
    assert denormals.modes() == before


@pytest.mark.parametrize("op", ["family_layer", "family_layer_x"])
def test_the_family_ops_read_denormal_state_as_zero_in_float32_only(op):
    """An LSTM with zero weights halves c each step (f = 1/2, g = 0): a denormal cx reads
    as 0 in float32, and float64 keeps it."""
    for dtype, c, flushed in ((torch.float32, TINY32 / 4, True), (torch.float64, TINY64 / 4, False)):
        cx = torch.full((1, 2, 4), c, dtype=dtype)
        hx = torch.zeros_like(cx)
        w_hh = torch.zeros(1, 16, 4, dtype=dtype)
        if op == "family_layer":
            args = (torch.zeros(3, 2, 1, 16, dtype=dtype), hx, cx, w_hh, None, None, None)
        else:
            args = (torch.zeros(3, 2, 1, dtype=dtype), torch.zeros(1, 16, 1, dtype=dtype), None,
                    hx, cx, w_hh, None, None)
        _, _, c_n, _ = getattr(torch.ops.gru_torch, op)(*args, 2, 0, False)
        want = torch.zeros_like(cx) if flushed else cx / 8
        assert torch.equal(c_n, want), (dtype, c_n, want)
