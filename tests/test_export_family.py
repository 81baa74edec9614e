"""Export of the whole family: gru_torch.LSTM and RNN (tanh, relu), and GRUs with Keras's
hard-sigmoid gates, to ONNX's LSTM, RNN and GRU operators, run in ONNX Runtime against
PyTorch (bidirectional, 2 layers, lengths, batch_first, one bias, initial states), and
through torch.export and back. Beside them, the checks every op of the extension (and
export's own op) owes torch.library (opcheck), and torch.compile(fullgraph=True) of the
LSTM and RNN modules on the backends that run them on the CPU."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gru_torch
from gru_torch import export, ops, testing
from gru_torch.models import ModelConfig, SentimentClassifier

pytestmark = [pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                 reason="the extension's ops (and the GRU's export) need it"),
              pytest.mark.filterwarnings("ignore:gru_torch. falling back")]
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

I = 4


class Wrapped(nn.Module):
    """A model holding one recurrent module: its outputs and final states, flat, from
    (x, lengths) or, with_state, (x, lengths, h_0[, c_0])."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.rnn = layer

    def forward(self, x, lengths, h0=None, c0=None):
        hx = h0 if c0 is None else (h0, c0)
        out, h = self.rnn(x, hx, lengths=lengths)
        return (out, *h) if isinstance(h, tuple) else (out, h)


def make(kind: str, batch_first: bool = True, **kw) -> nn.Module:
    common = dict(num_layers=2, batch_first=batch_first, bidirectional=True)
    common.update(kw)
    if kind == "lstm":
        return gru_torch.LSTM(I, 5, **common)
    if kind == "gru":
        return gru_torch.GRU(I, 5, **common)
    return gru_torch.RNN(I, 5, nonlinearity=kind.split("_")[1], **common)


def inputs(m: nn.Module, B: int, T: int, seed: int, with_state: bool = False) -> tuple:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    x = torch.randn(*((B, T) if m.batch_first else (T, B)), I, generator=g)
    if not with_state:
        return x, lengths
    L = m.num_layers * m.num_directions
    state = (torch.randn(L, B, m.hidden_size, generator=g),)
    if isinstance(m, gru_torch.LSTM):
        state += (torch.randn(L, B, m.hidden_size, generator=g),)
    return (x, lengths) + state


def dims(m: nn.Module, with_state: bool) -> tuple:
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    shapes = ({0: batch, 1: time} if m.batch_first else {0: time, 1: batch}, {0: batch})
    if with_state:
        shapes += ({1: batch},) * (2 if isinstance(m, gru_torch.LSTM) else 1)
    return shapes


def attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# (kind, module arguments, initial states as inputs, expected ONNX activations per direction)
CASES = {
    "lstm": ("lstm", {}, False, None),
    "lstm-single-bias-hard-keras2-state": (
        "lstm", dict(single_bias=True, recurrent_activation="hard_sigmoid_keras2"), True,
        (["HardSigmoid", "Tanh", "Tanh"], 0.2)),
    "lstm-nobias-hard-keras3-timefirst": (
        "lstm", dict(bias=False, recurrent_activation="hard_sigmoid_keras3", batch_first=False),
        False, (["HardSigmoid", "Tanh", "Tanh"], 1 / 6)),
    "rnn-tanh-single-bias-state": ("rnn_tanh", dict(single_bias=True), True, (["Tanh"], None)),
    "rnn-relu": ("rnn_relu", {}, False, (["Relu"], None)),
    "gru-cho-hard-keras2": (
        "gru", dict(reset_after=False, recurrent_activation="hard_sigmoid_keras2"), False,
        (["HardSigmoid", "Tanh"], 0.2)),
    "gru-hard-keras3-state": ("gru", dict(recurrent_activation="hard_sigmoid_keras3"), True,
                              (["HardSigmoid", "Tanh"], 1 / 6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_runtime_matches_pytorch(tmp_path, case):
    kind, kw, with_state, acts = CASES[case]
    torch.manual_seed(0)
    layer = make(kind, **kw)
    model = Wrapped(layer).eval()
    n_states = 1 + (kind == "lstm")
    names = ["x", "lengths"] + (["h0", "c0"][:n_states] if with_state else [])
    path = export.to_onnx(model, inputs(layer, 3, 7, 0, with_state), tmp_path / "m.onnx",
                          dims(layer, with_state), names, ["out", "h_n", "c_n"][:1 + n_states])
    graph = onnx.load(str(path)).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), "no custom ops"
    op_type = {"lstm": "LSTM", "gru": "GRU"}.get(kind, "RNN")
    nodes = [n for n in graph.node if n.op_type == op_type]
    assert len(nodes) == 2, "one ONNX node per layer"
    for node in nodes:
        a = attributes(node)
        assert a["direction"] == b"bidirectional" and a["hidden_size"] == 5
        assert node.input[4], "lengths reach sequence_lens"
        if kind == "gru":
            assert a["linear_before_reset"] == int(kw.get("reset_after", True))
        if acts is None:
            assert "activations" not in a, "ONNX's defaults (Sigmoid/Tanh) are the cell's"
        else:
            assert a["activations"] == [s.encode() for s in acts[0]] * 2
            if acts[1] is not None:
                np.testing.assert_allclose(a["activation_alpha"], acts[1], rtol=1e-7)
                np.testing.assert_allclose(a["activation_beta"], 0.5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B, T, seed in ((3, 7, 1), (1, 1, 2), (5, 12, 3)):  # other batch and time sizes
        args = inputs(layer, B, T, seed, with_state)
        got = session.run(None, {n: t.numpy() for n, t in zip(names, args)})
        with torch.no_grad():
            want = model(*args)
        assert len(got) == len(want) == 1 + n_states
        for g, w in zip(got, want):  # outputs, h_n (and c_n)
            np.testing.assert_allclose(g, w.numpy(), atol=2e-6, rtol=0)
        past = torch.arange(T)[None, :] >= args[1][:, None]
        out = torch.from_numpy(got[0])
        assert (out[past if layer.batch_first else past.T] == 0).all(), "zeros past lengths"


@pytest.mark.parametrize("cell,activation", [("lstm", "hard_sigmoid_keras2"), ("rnn", "sigmoid")])
def test_classifier_onnx_matches_pytorch(tmp_path, cell, activation):
    torch.manual_seed(1)
    model = SentimentClassifier(ModelConfig(vocab_size=60, embed_dim=8, cell=cell, hidden=[6, 5],
                                            bidirectional=True, recurrent_activation=activation,
                                            pooling="last+max", head=[4]))
    args, shapes = export.classifier_inputs(model)
    path = export.to_onnx(model, args, tmp_path / "clf.onnx", shapes, ["ids", "lengths"],
                          ["logits"])
    assert model.training, "export leaves the model's mode as it was"
    kinds = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in ("LSTM", "RNN")]
    assert kinds == [cell.upper()] * 2
    err = export.onnx_max_error(model, path)
    assert err is not None and err < 1e-5


class Mixed(nn.Module):
    """A GRU the fused op runs, an LSTM with projections, then a relu RNN."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = gru_torch.GRU(I, 5, batch_first=True, bidirectional=True)
        self.lstm = gru_torch.LSTM(10, 6, batch_first=True, proj_size=3, single_bias=True)
        self.rnn = gru_torch.RNN(3, 4, 2, "relu", batch_first=True, bidirectional=True)

    def forward(self, x, lengths):
        x, h = self.gru(x, lengths=lengths)
        x, (h2, c2) = self.lstm(x, lengths=lengths)
        x, h3 = self.rnn(x, lengths=lengths)
        return x, h, h2, c2, h3


def test_torch_export_round_trip(tmp_path):
    """One gru_layer node for the GRU, export_layer nodes for the LSTM (with projections,
    which ONNX refuses) and both RNN layers; the saved program loads and matches the model
    at other sizes; the modules' forward is theirs again afterwards."""
    torch.manual_seed(2)
    model = Mixed()
    args = inputs(model.gru, 3, 7, 0)
    program = export.export_program(model, args, dims(model.gru, False))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.gru_torch.gru_layer.default) == 1
    assert targets.count(torch.ops.gru_torch.export_layer.default) == 3
    assert not any("forward" in vars(m) for m in model.modules()), "forward restored"
    torch.export.save(program, tmp_path / "m.pt2")
    cases = [inputs(model.gru, B, T, seed) for B, T, seed in ((5, 9, 4), (1, 2, 5))]
    torch.save(cases, tmp_path / "inputs.pt")
    # a fresh process, as a deployment loads it: load_program makes both ops known
    code = ("import sys, torch; from gru_torch.export import load_program; "
            "torch.set_grad_enabled(False); m = load_program(sys.argv[1]).module(); "
            "cases = torch.load(sys.argv[2]); torch.save([m(*c) for c in cases], sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt2"),
                           str(tmp_path / "inputs.pt"), str(tmp_path / "got.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for args, got in zip(cases, torch.load(tmp_path / "got.pt")):
        with torch.no_grad():
            want = model.eval()(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"proj_size=3.*proj_size=0 only") as info:
        export.to_onnx(model, args, tmp_path / "m.onnx")
    assert isinstance(info.value, export.ExportError) and "lstm" in str(info.value)


def test_export_of_an_unbatched_call():
    torch.manual_seed(3)
    model = Wrapped(gru_torch.LSTM(I, 3, recurrent_activation="hard_sigmoid_keras3"))
    x, lengths = torch.randn(6, I), None
    program = export.export_program(model, (x, lengths))
    with torch.no_grad():
        got, want = program.module()(x, lengths), model.eval()(x, lengths)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- torch.library.opcheck
def _rand(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype)


def _export_layer_samples():
    g = torch.Generator().manual_seed(0)
    T, B, H, D = 4, 3, 3, 2
    lengths = torch.tensor([4, 1, 3])
    for kind, gates, act, ra, w_hr in (("gru", 3, "tanh", "hard_sigmoid_keras2", False),
                                       ("lstm", 4, "tanh", "sigmoid", False),
                                       ("lstm", 4, "tanh", "hard_sigmoid_keras3", True),
                                       ("rnn", 1, "relu", "sigmoid", False)):
        P = 2 if w_hr else H
        cx = _rand(g, D, B, H) if kind == "lstm" else None
        yield (_rand(g, T, B, 2), _rand(g, D, B, P), cx, _rand(g, D, gates * H, 2),
               _rand(g, D, gates * H, P), _rand(g, D, gates * H),
               None if kind == "rnn" else _rand(g, D, gates * H),
               _rand(g, D, P, H) if w_hr else None, lengths, kind, act, ra, kind != "gru")


@pytest.mark.parametrize("sample", list(_export_layer_samples()),
                         ids=["gru", "lstm", "lstm-proj", "rnn"])
def test_opcheck_export_layer(sample):
    torch.library.opcheck(torch.ops.gru_torch.export_layer.default, sample)


def _gru_args(g, dtype, requires_grad):
    T, B, H, D = 2, 2, 2, 1
    ts = [_rand(g, T, B, 2, dtype=dtype), _rand(g, D, B, H, dtype=dtype),
          _rand(g, D, 3 * H, 2, dtype=dtype), _rand(g, D, 3 * H, H, dtype=dtype),
          _rand(g, D, 3 * H, dtype=dtype), _rand(g, D, 3 * H, dtype=dtype)]
    return [t.requires_grad_(requires_grad) for t in ts] + [None, torch.tensor([2, 1]), True]


@pytest.mark.parametrize("emulated", [False, True], ids=["cpu", "emulated"])
def test_opcheck_backward_and_emulated_ops(emulated):
    """gru_layer's own opcheck is in test_ops.py; here the backward op (its autograd, for
    double backward, included) and the emulated pair, which run the CUDA kernels on the
    CPU. (The extension's other ops take no tensors, or, _device_selftest below, are
    test hooks that no graph traces.)"""
    ops._register()
    g = torch.Generator().manual_seed(1)
    forward = torch.ops.gru_torch.gru_layer_emulated if emulated else torch.ops.gru_torch.gru_layer
    backward = (torch.ops.gru_torch.gru_layer_backward_emulated if emulated
                else torch.ops.gru_torch.gru_layer_backward)
    context = testing.emulate_cuda() if emulated else warnings.catch_warnings()
    with context:
        args = _gru_args(g, torch.bfloat16 if emulated else torch.float32, True)
        if emulated:
            torch.library.opcheck(forward.default, (*args, True))
        with torch.no_grad():
            out, h_n, reserve = forward(*args, True)
        # both backward ops share one autograd formula (the reference's): checked on the CPU op
        grads = [torch.randn(out.shape, generator=g).to(out.dtype),
                 torch.randn(h_n.shape, generator=g).to(out.dtype)]
        inputs = [t.detach().requires_grad_(not emulated) for t in grads + args[:6]]
        torch.library.opcheck(backward.default, (*inputs, *args[6:], reserve, out))


def test_opcheck_device_selftest_schema():
    """_device_selftest writes its buffers, as its schema (Tensor(a!)[]) says."""
    with testing.emulate_cuda():
        torch.library.opcheck(torch.ops.gru_torch._device_selftest.default,
                              ("launch", [torch.zeros(4, dtype=torch.int32)], [32, 0, 1, 1]),
                              test_utils=("test_schema",))


# ---------------------------------------------------------------- torch.compile
# On the CPU, LSTM and RNN run torch.nn's kernel ("auto" picks it where nn has the cell) or
# the reference loop (hard sigmoids, Keras dropout). nn's kernel takes lengths through
# pack_padded_sequence, which dynamo does not trace (nor nn.LSTM's packed input): without.
COMPILE_CASES = [("lstm", "cudnn", {}, False),
                 ("lstm", "reference", dict(recurrent_activation="hard_sigmoid_keras2"), True),
                 ("rnn_relu", "cudnn", {}, False),
                 ("rnn_tanh", "reference", dict(single_bias=True), True)]


@pytest.mark.parametrize("kind,backend,kw,use_lengths", COMPILE_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in COMPILE_CASES])
def test_torch_compile_fullgraph(kind, backend, kw, use_lengths):
    torch._dynamo.reset()
    torch.manual_seed(4)
    layers = 2 if backend == "cudnn" else 1  # the reference unrolls: keep its graph small
    layer = make(kind, backend=backend, num_layers=layers, **kw)
    x, lengths = inputs(layer, 3, 4, 0)
    x.requires_grad_()
    lengths = lengths if use_lengths else None

    def step(x):
        out, h = layer(x, lengths=lengths)
        h = h[0] + h[1] if isinstance(h, tuple) else h
        return out.square().mean() + h.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (gx,) = torch.autograd.grad(loss, x)
    ref_loss = step(x)
    (ref_gx,) = torch.autograd.grad(ref_loss, x)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(gx, ref_gx)
