"""gru_torch.GRU is a drop-in for torch.nn.GRU: same outputs, final states and gradients
(float64, every backend that runs on the CPU), same parameter names and state_dict."""
from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gru_torch
from conftest import assert_close, available_backends

T, B, I, H = 7, 4, 3, 5
DT = torch.float64
ATOL = 1e-10
# Unsorted, with ties. For PackedSequence the longest row has all T steps; for lengths=
# no row reaches T, so the padded output has trailing all-padding steps as well.
PACKED_LENGTHS = [4, 7, 2, 4]
PADDED_LENGTHS = [4, 6, 2, 4]

FORMS = ["batched", "unbatched", "packed", "lengths"]


def _seed_for(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) % (2**31 - 10)


def _make_modules(num_layers, bidirectional, batch_first, backend, seed):
    torch.manual_seed(seed)
    ref = nn.GRU(I, H, num_layers, batch_first=batch_first, bidirectional=bidirectional,
                 dtype=DT)
    mod = gru_torch.GRU.from_torch(ref, backend=backend)
    return ref, mod


def _inputs(form, num_layers, bidirectional, batch_first, with_hx, gen):
    """Returns (x, hx, lengths) as plain tensors (not leaves yet)."""
    D = 2 if bidirectional else 1
    if form == "unbatched":
        x = torch.randn(T, I, dtype=DT, generator=gen)
        hx = torch.randn(num_layers * D, H, dtype=DT, generator=gen) if with_hx else None
        return x, hx, None
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, dtype=DT, generator=gen)
    hx = torch.randn(num_layers * D, B, H, dtype=DT, generator=gen) if with_hx else None
    lengths = None
    if form == "packed":
        lengths = torch.tensor(PACKED_LENGTHS)
    elif form == "lengths":
        lengths = torch.tensor(PADDED_LENGTHS)
    return x, hx, lengths


def _run(module, form, x, hx, lengths, batch_first, w_out, w_h, is_gru_torch):
    """Runs module; returns (out, h_n, grads dict) where out is the comparable output
    tensor (packed .data for PackedSequence) and grads are w.r.t. the input (packed data
    for PackedSequence), hx and every parameter by name."""
    module.zero_grad(set_to_none=True)
    leaves = {}
    if form == "packed":
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        data = packed.data.detach().clone().requires_grad_(True)
        leaves["input"] = data
        arg = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
    else:
        xin = x.detach().clone().requires_grad_(True)
        leaves["input"] = xin
        arg = xin
    hin = None
    if hx is not None:
        hin = hx.detach().clone().requires_grad_(True)
        leaves["hx"] = hin

    if form == "lengths" and not is_gru_torch:
        # nn.GRU's equivalent of lengths=: the PackedSequence, padded back to T steps.
        packed = pack_padded_sequence(arg, lengths, batch_first=batch_first, enforce_sorted=False)
        out_p, h_n = module(packed, hin)
        out, out_lengths = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
        assert out_lengths.tolist() == lengths.tolist()
    elif form == "lengths":
        out, h_n = module(arg, hin, lengths=lengths)
    else:
        out, h_n = module(arg, hin)

    if form == "packed":
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, arg.batch_sizes)
        assert torch.equal(out.sorted_indices, arg.sorted_indices)
        assert torch.equal(out.unsorted_indices, arg.unsorted_indices)
        out = out.data
    loss = (out * w_out(out.shape)).sum() + (h_n * w_h(h_n.shape)).sum()
    names = list(leaves) + [n for n, _ in module.named_parameters()]
    tensors = list(leaves.values()) + [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, tensors)
    return out.detach(), h_n.detach(), dict(zip(names, grads))


COMBOS = list(itertools.product(available_backends(), [1, 2], [False, True], [False, True],
                                [False, True], FORMS))


def _combo_id(c):
    backend, L, bidir, bf, with_hx, form = c
    return (f"{backend}-L{L}-{'bi' if bidir else 'uni'}-{'bf' if bf else 'tf'}-"
            f"{'hx' if with_hx else 'nohx'}-{form}")


@pytest.mark.parametrize("backend,num_layers,bidirectional,batch_first,with_hx,form", COMBOS,
                         ids=[_combo_id(c) for c in COMBOS])
def test_matches_nn_gru(backend, num_layers, bidirectional, batch_first, with_hx, form):
    seed = _seed_for(num_layers, bidirectional, batch_first, with_hx, form)
    ref, mod = _make_modules(num_layers, bidirectional, batch_first, backend, seed)
    assert mod.backend == backend
    gen = torch.Generator().manual_seed(seed + 1)
    x, hx, lengths = _inputs(form, num_layers, bidirectional, batch_first, with_hx, gen)

    # one random linear functional of (output, h_n), the same for both modules
    weights = {}

    def w(shape, key):
        if key not in weights:
            g = torch.Generator().manual_seed(seed + (2 if key == "out" else 3))
            weights[key] = torch.randn(*shape, dtype=DT, generator=g)
        assert weights[key].shape == shape
        return weights[key]

    w_out = lambda s: w(s, "out")  # noqa: E731
    w_h = lambda s: w(s, "h")  # noqa: E731

    out_r, h_r, g_r = _run(ref, form, x, hx, lengths, batch_first, w_out, w_h, False)
    out_m, h_m, g_m = _run(mod, form, x, hx, lengths, batch_first, w_out, w_h, True)

    assert_close(out_m, out_r, atol=ATOL, what="output")
    assert_close(h_m, h_r, atol=ATOL, what="h_n")
    assert set(g_m) == set(g_r), f"gradient names differ: {sorted(g_m)} vs {sorted(g_r)}"
    expected_names = {n for n, _ in ref.named_parameters()} | {"input"} | ({"hx"} if with_hx else set())
    assert set(g_r) == expected_names
    for name in sorted(g_r):
        assert g_m[name] is not None, f"no gradient for {name}"
        assert g_r[name].abs().sum() > 0, f"trivial reference gradient for {name}"
        assert_close(g_m[name], g_r[name], atol=ATOL, what=f"grad {name}")

    if form == "lengths":
        _check_lengths_semantics(out_m, h_m, lengths, num_layers, bidirectional, batch_first)


def _check_lengths_semantics(out, h_n, lengths, num_layers, bidirectional, batch_first):
    """Outputs are zero after each row's length; the top layer's h_n is the state at
    each row's length (forward: output at len-1; reverse: output at step 0)."""
    D = 2 if bidirectional else 1
    o = out if batch_first else out.transpose(0, 1)  # [B, T, D*H]
    assert o.shape == (B, T, D * H)
    top = h_n[(num_layers - 1) * D:]
    for b, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(o[b, n:]) == 0, f"row {b}: output not zero after length {n}"
        assert torch.count_nonzero(o[b, :n]) > 0
        assert_close(top[0, b], o[b, n - 1, :H], atol=ATOL, what=f"h_n fwd row {b}")
        if bidirectional:
            assert_close(top[1, b], o[b, 0, H:], atol=ATOL, what=f"h_n reverse row {b}")


def test_lengths_list_and_tensor_agree():
    """lengths= accepts a list as well as a tensor, with the same result."""
    torch.manual_seed(0)
    mod = gru_torch.GRU(I, H, dtype=DT, backend="reference")
    x = torch.randn(T, B, I, dtype=DT)
    a = mod(x, lengths=torch.tensor(PADDED_LENGTHS))
    b = mod(x, lengths=PADDED_LENGTHS)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- state_dict
SD_COMBOS = list(itertools.product([1, 2], [False, True], [True, False]))


@pytest.mark.parametrize("num_layers,bidirectional,bias", SD_COMBOS,
                         ids=[f"L{L}-{'bi' if d else 'uni'}-{'bias' if b else 'nobias'}"
                              for L, d, b in SD_COMBOS])
def test_state_dict_round_trip(num_layers, bidirectional, bias):
    torch.manual_seed(1)
    ref = nn.GRU(I, H, num_layers, bias=bias, bidirectional=bidirectional, dtype=DT)
    mod = gru_torch.GRU(I, H, num_layers, bias=bias, bidirectional=bidirectional, dtype=DT)

    ref_sd, mod_sd = ref.state_dict(), mod.state_dict()
    assert list(mod_sd) == list(ref_sd), "parameter names/order differ from nn.GRU"
    for k in ref_sd:
        assert mod_sd[k].shape == ref_sd[k].shape, k
        assert mod_sd[k].dtype == ref_sd[k].dtype, k

    # nn.GRU -> gru_torch.GRU
    result = mod.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in ref.state_dict().items():
        assert torch.equal(mod.state_dict()[k], v), k

    # gru_torch.GRU -> nn.GRU (with fresh, different weights on both sides first)
    torch.manual_seed(2)
    mod2 = gru_torch.GRU(I, H, num_layers, bias=bias, bidirectional=bidirectional, dtype=DT)
    ref2 = nn.GRU(I, H, num_layers, bias=bias, bidirectional=bidirectional, dtype=DT)
    assert not torch.equal(ref2.weight_hh_l0, mod2.weight_hh_l0)
    result = ref2.load_state_dict(mod2.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in mod2.state_dict().items():
        assert torch.equal(ref2.state_dict()[k], v), k

    # ... and they then compute the same thing
    x = torch.randn(T, B, I, dtype=DT)
    out_r, h_r = ref2(x)
    out_m, h_m = mod2(x)
    assert_close(out_m, out_r, atol=ATOL, what="output after load")
    assert_close(h_m, h_r, atol=ATOL, what="h_n after load")

    # to_torch() gives back an equivalent nn.GRU
    back = mod2.to_torch()
    assert isinstance(back, nn.GRU)
    for k, v in mod2.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_from_torch_copies_configuration_and_mode():
    ref = nn.GRU(I, H, 2, bias=True, batch_first=True, dropout=0.25, bidirectional=True,
                 dtype=DT).eval()
    mod = gru_torch.GRU.from_torch(ref, backend="reference")
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "bidirectional"):
        assert getattr(mod, attr) == getattr(ref, attr), attr
    assert mod.dropout == pytest.approx(0.25)
    assert mod.training is False
    assert mod.weight_ih_l0.dtype == DT
    for k, v in ref.state_dict().items():
        assert torch.equal(mod.state_dict()[k], v), k
    # the copy is independent of the source
    with torch.no_grad():
        mod.weight_ih_l0.add_(1.0)
    assert not torch.equal(mod.weight_ih_l0, ref.weight_ih_l0)
    with pytest.raises(TypeError, match="nn.GRU"):
        gru_torch.GRU.from_torch(nn.LSTM(I, H))


# ------------------------------------------------- grad modes and partial requires_grad
@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("lengths", [None, PADDED_LENGTHS], ids=["full", "lengths"])
def test_no_grad_and_inference_mode_match_grad_mode(backend, lengths):
    """Without autograd the op may skip saving what backward needs; the forward result
    must not change."""
    torch.manual_seed(3)
    ref = nn.GRU(I, H, 2, bidirectional=True, dtype=DT)
    mod = gru_torch.GRU.from_torch(ref, backend=backend)
    x = torch.randn(T, B, I, dtype=DT)
    hx = torch.randn(4, B, H, dtype=DT)
    kw = {} if lengths is None else {"lengths": torch.tensor(lengths)}
    out_g, h_g = mod(x, hx, **kw)
    assert out_g.requires_grad
    with torch.no_grad():
        out_n, h_n = mod(x, hx, **kw)
    with torch.inference_mode():
        out_i, h_i = mod(x, hx, **kw)
    for a, b, what in ((out_n, out_g, "no_grad output"), (h_n, h_g, "no_grad h_n"),
                       (out_i, out_g, "inference output"), (h_i, h_g, "inference h_n")):
        assert_close(a, b.detach(), atol=ATOL, what=what)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("needs", ["input", "hx", "params"])
def test_partial_requires_grad(backend, needs):
    """Gradients are right when only some of (input, hx, parameters) require them."""
    torch.manual_seed(4)
    ref = nn.GRU(I, H, 1, bidirectional=True, dtype=DT)
    mod = gru_torch.GRU.from_torch(ref, backend=backend)
    for m in (ref, mod):
        m.requires_grad_(needs == "params")
    x = torch.randn(T, B, I, dtype=DT, requires_grad=needs == "input")
    hx = torch.randn(2, B, H, dtype=DT, requires_grad=needs == "hx")
    w = torch.randn(T, B, 2 * H, dtype=DT)
    wanted = {"input": [x], "hx": [hx], "params": None}[needs]
    results = []
    for m in (ref, mod):
        out, h_n = m(x, hx)
        loss = (out * w).sum() + h_n.sum()
        targets = wanted if wanted is not None else list(m.parameters())
        results.append(torch.autograd.grad(loss, targets))
    assert len(results[0]) == len(results[1])
    for g_m, g_r in zip(results[1], results[0]):
        assert g_r.abs().sum() > 0
        assert_close(g_m, g_r, atol=ATOL, what=f"grad ({needs})")


# ------------------------------------------------------------------ other shapes
@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
def test_large_batch_matches_nn_gru(backend, use_lengths):
    """A batch large enough that the fused op splits the sequence into several time
    blocks (it blocks about 1024 rows of T*B: here steps 0-7 and 8), the last one partial."""
    Bl, Tl = 129, 9
    torch.manual_seed(6)
    ref = nn.GRU(I, H, 1, bidirectional=True, dtype=DT)
    mod = gru_torch.GRU.from_torch(ref, backend=backend)
    x = torch.randn(Tl, Bl, I, dtype=DT)
    hx = torch.randn(2, Bl, H, dtype=DT)
    lengths = torch.randint(1, Tl + 1, (Bl,)) if use_lengths else None
    w = torch.randn(Tl, Bl, 2 * H, dtype=DT)
    results = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_(True)
        hi = hx.clone().requires_grad_(True)
        if m is ref and use_lengths:
            packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
            out_p, h_n = m(packed, hi)
            out, _ = pad_packed_sequence(out_p, total_length=Tl)
        elif use_lengths:
            out, h_n = m(xi, hi, lengths=lengths)
        else:
            out, h_n = m(xi, hi)
        loss = (out * w).sum() + (h_n * h_n).sum()
        grads = torch.autograd.grad(loss, [xi, hi] + list(m.parameters()))
        results.append((out.detach(), h_n.detach(), grads))
    assert_close(results[1][0], results[0][0], atol=ATOL, what="output")
    assert_close(results[1][1], results[0][1], atol=ATOL, what="h_n")
    names = ["input", "hx"] + [n for n, _ in ref.named_parameters()]
    for name, g_m, g_r in zip(names, results[1][2], results[0][2]):
        assert_close(g_m, g_r, atol=1e-9, what=f"grad {name}")


@pytest.mark.parametrize("backend", available_backends())
def test_packed_enforce_sorted_true(backend):
    torch.manual_seed(7)
    ref = nn.GRU(I, H, 2, bidirectional=True, dtype=DT)
    mod = gru_torch.GRU.from_torch(ref, backend=backend)
    x = torch.randn(T, B, I, dtype=DT)
    hx = torch.randn(4, B, H, dtype=DT)
    packed = pack_padded_sequence(x, [7, 5, 5, 1], enforce_sorted=True)
    assert packed.sorted_indices is None
    out_m, h_m = mod(packed, hx)
    out_r, h_r = ref(packed, hx)
    assert out_m.sorted_indices is None and torch.equal(out_m.batch_sizes, out_r.batch_sizes)
    assert_close(out_m.data.detach(), out_r.data.detach(), atol=ATOL, what="output")
    assert_close(h_m.detach(), h_r.detach(), atol=ATOL, what="h_n")


_EMPTY_BATCH = """
import sys, torch, gru_torch
from torch import nn
torch.manual_seed(0)
ref = nn.GRU(3, 5, 2, bidirectional=True, dtype=torch.float64)
mod = gru_torch.GRU.from_torch(ref, backend=sys.argv[1])
x = torch.randn(4, 0, 3, dtype=torch.float64)
out, h_n = mod(x)
out_r, h_r = ref(x)
assert out.shape == out_r.shape == (4, 0, 10), (out.shape, out_r.shape)
assert h_n.shape == h_r.shape == (4, 0, 5), (h_n.shape, h_r.shape)
print("OK")
"""


@pytest.mark.parametrize("backend", available_backends())
def test_empty_batch_like_nn_gru(backend):
    """nn.GRU accepts a batch of 0 rows; so must every backend. Run in a subprocess,
    since a crash in the compiled op would take the test process down."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _EMPTY_BATCH, backend], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, (
        f"rc={proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-2000:]}")
