"""The compiled op itself: against the reference, gradcheck, opcheck, torch.compile."""
import itertools

import pytest
import torch

import gru_torch
from gru_torch import ops
from gru_torch.reference import gru_layer_reference

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="gru_torch extension not built")


def make_args(T=5, B=4, I=3, H=6, D=1, reset_after=True, bias=True, mask=False, lengths=False,
              dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    b_ih = rand(D, 3 * H) if bias else None
    b_hh = rand(D, 3 * H) if bias and reset_after else None
    m = (torch.rand(D, B, H, generator=g) > 0.3).to(dtype) / 0.7 if mask else None
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    if lens is not None:
        lens[0] = T
    return (rand(T, B, I), rand(D, B, H), rand(D, 3 * H, I) * 0.5, rand(D, 3 * H, H) * 0.5,
            b_ih, b_hh, m, lens, reset_after)


CASES = list(itertools.product([True, False], [1, 2], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("reset_after,D,mask,lengths,bias", CASES)
def test_matches_reference(reset_after, D, mask, lengths, bias):
    args = make_args(T=7, B=5, D=D, reset_after=reset_after, mask=mask, lengths=lengths, bias=bias)
    args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                 and a.requires_grad else a for a in args)
    out, h_n = ops.gru_layer(*args)
    ref_out, ref_h = gru_layer_reference(*args)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    go = torch.randn(out.shape, generator=g, dtype=out.dtype)
    gh = torch.randn(h_n.shape, generator=g, dtype=out.dtype)
    leaves = [a for a in args[:6] if a is not None]
    grads = torch.autograd.grad((out * go).sum() + (h_n * gh).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * go).sum() + (ref_h * gh).sum(), leaves)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)
    if lengths:
        lens = args[7]
        t = torch.arange(out.shape[0]).unsqueeze(1)
        assert (out[t >= lens] == 0).all(), "output must be zero past each row's length"


@pytest.mark.parametrize("reset_after", [True, False])
def test_gradcheck(reset_after):
    args = make_args(T=4, B=3, I=2, H=3, D=2, reset_after=reset_after, mask=True, lengths=True)
    assert torch.autograd.gradcheck(lambda *a: ops.gru_layer(*a), args, eps=1e-6, atol=1e-7)


def _opcheck_samples():
    for reset_after, mask, lengths in itertools.product([True, False], [False, True], [False, True]):
        a = make_args(D=2, reset_after=reset_after, mask=mask, lengths=lengths, dtype=torch.float32)
        yield a + (True,)


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: f"ra{s[8]}-m{s[6] is not None}-l{s[7] is not None}")
def test_opcheck(sample):
    ops._register()
    torch.library.opcheck(torch.ops.gru_torch.gru_layer.default, sample)


def test_no_reserve_without_grad():
    args = make_args(T=6, B=3)
    with torch.no_grad():
        out, h_n = ops.gru_layer(*args)
        raw = torch.ops.gru_torch.gru_layer(*args, False)
    assert raw[2].numel() == 0
    torch.testing.assert_close(out, raw[0], rtol=0, atol=0)
    torch.testing.assert_close(h_n, raw[1], rtol=0, atol=0)


def test_lengths_out_of_range_in_op():
    args = list(make_args(T=5, B=2))
    args[7] = torch.tensor([5, 6])
    with pytest.raises(RuntimeError, match="lengths"):
        torch.ops.gru_torch.gru_layer(*args, True)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    gru = gru_torch.GRU(3, 6, num_layers=2, bidirectional=True, batch_first=True,
                        backend="fused")
    x = torch.randn(4, 5, 3, requires_grad=True)

    def step(x):
        out, h_n = gru(x)
        return out.square().mean() + h_n.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (gx,) = torch.autograd.grad(loss, x)
    ref_loss = step(x)
    (ref_gx,) = torch.autograd.grad(ref_loss, x)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(gx, ref_gx)


@pytest.mark.parametrize("reset_after", [True, False])
def test_output_may_be_modified_in_place(reset_after):
    """nn.GRU lets a caller scale its output and h_n in place before backward; so must
    the op (whose CPU backward reads the states from the output: it runs the forward
    again when the output was modified)."""
    args = make_args(T=6, B=3, D=2, reset_after=reset_after, mask=True, lengths=True)
    out, h_n = ops.gru_layer(*args)
    out.mul_(2)
    h_n[:, 0].mul_(3)
    grads = torch.autograd.grad(out.sum() + h_n.sum(), args[:4])
    ref_out, ref_h = gru_layer_reference(*args)
    ref_h = torch.cat([3 * ref_h[:, :1], ref_h[:, 1:]], dim=1)
    ref_grads = torch.autograd.grad(2 * ref_out.sum() + ref_h.sum(), args[:4])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_backward_reads_the_states_from_the_output():
    """The CPU op's reserve keeps no states: its backward reads them from the output it
    is given. The right one gives the reference's gradients, another one other gradients,
    and one of the wrong shape an error naming it."""
    args = make_args(T=6, B=3, D=2, lengths=True)
    layer = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:8])
    out, h_n, reserve = torch.ops.gru_torch.gru_layer(*layer, args[8], True)
    assert tuple(reserve.shape) == ops.reserve_shape(out.device, False, 2, 6, 3, 6) == (2, 6, 3, 18)
    g = torch.Generator().manual_seed(2)
    go = torch.randn(out.shape, generator=g, dtype=out.dtype)
    gh = torch.randn(h_n.shape, generator=g, dtype=out.dtype)
    backward = torch.ops.gru_torch.gru_layer_backward
    grads = backward(go, gh, *layer, args[8], reserve, out)
    ref_out, ref_h = gru_layer_reference(*args)
    ref_grads = torch.autograd.grad((ref_out * go).sum() + (ref_h * gh).sum(), args[:4])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)
    other = backward(go, gh, *layer, args[8], reserve, out * 0.5)
    assert not torch.allclose(other[0], grads[0])
    with pytest.raises(RuntimeError, match="output must be the forward's output"):
        backward(go, gh, *layer, args[8], reserve, out[:-1])


@pytest.mark.parametrize("reset_after", [True, False])
def test_float32_error_like_nn_gru(reset_after):
    """In float32 the fused op strays from the float64 result no more than nn.GRU's own
    float32 path does (with a small margin for the fast exp)."""
    torch.manual_seed(0)
    args64 = make_args(T=300, B=16, I=32, H=48, D=2, reset_after=reset_after, bias=True,
                       lengths=True)
    # nn.GRU's initial scale (1/sqrt(H)) rather than make_args's chaotic 0.5
    scale = [1, 1, 0.3, 0.3, 0.3, 0.3]
    args64 = tuple(a.detach() * scale[i] if i < 6 and a is not None else a
                   for i, a in enumerate(args64))
    args32 = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                   for a in args64)
    exact, _ = gru_layer_reference(*args64)
    with torch.no_grad():
        fused, _ = ops.gru_layer(*args32)
    err = (fused.double() - exact).abs().max().item()
    nn_err = 0.0
    if reset_after:  # nn.GRU's own float32 error on the same problem, direction 0
        x, hx, w_ih, w_hh, b_ih, b_hh, _, lengths, _ = args32
        gru = torch.nn.GRU(x.shape[2], hx.shape[2])
        with torch.no_grad():
            for p, v in zip((gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0),
                            (w_ih[0], w_hh[0], b_ih[0], b_hh[0])):
                p.copy_(v)
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, _ = gru(packed, hx[:1])
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
        nn_err = (out.double() - exact[..., :hx.shape[2]]).abs().max().item()
    assert err < max(2 * nn_err, 5e-6), (err, nn_err)


@pytest.mark.parametrize("reset_after", [True, False])
def test_float32_gradients_where_the_update_gate_saturates(reset_after):
    """The CPU op's backward recovers n from h = (1-z) n + z h_prev rather than keeping it.
    Where z rounds to 1 in float32 (n is lost) or nearly (a division by a tiny 1-z), the
    gradients must stay finite and as close to float64's as a float32 autograd run of the
    reference, which keeps n."""
    H = 16
    args64 = make_args(T=40, B=8, I=5, H=H, D=2, reset_after=reset_after, lengths=True)
    b_ih = args64[4].detach().clone()
    b_ih[:, H:H + 6] += 40.0         # z == 1 in float32
    b_ih[:, H + 6:H + 12] += 12.0    # 1 - z about 1e-5 to 1e-4
    args64 = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor)
                   and a.is_floating_point() else a
                   for a in args64[:4] + (b_ih,) + args64[5:])
    args32 = tuple(a.detach().float().requires_grad_() if isinstance(a, torch.Tensor)
                   and a.is_floating_point() and a.requires_grad else a for a in args64)
    g = torch.Generator().manual_seed(1)
    go = torch.randn(40, 8, 2 * H, generator=g, dtype=torch.float64)
    gh = torch.randn(2, 8, H, generator=g, dtype=torch.float64)

    def grads(layer, args):
        out, h_n = layer(*args)
        leaves = [a for a in args[:6] if a is not None]
        loss = (out * go.to(out.dtype)).sum() + (h_n * gh.to(out.dtype)).sum()
        return torch.autograd.grad(loss, leaves)

    exact = grads(gru_layer_reference, args64)
    fused = grads(ops.gru_layer, args32)
    ref32 = grads(gru_layer_reference, args32)
    for name, e, f, r in zip(["x", "hx", "w_ih", "w_hh", "b_ih", "b_hh"], exact, fused, ref32):
        assert torch.isfinite(f).all(), name
        err, ref_err = (f.double() - e).abs().max().item(), (r.double() - e).abs().max().item()
        assert err <= 2 * ref_err + 1e-6 * e.abs().max().item(), (name, err, ref_err)
