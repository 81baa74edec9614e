"""Export: torch.export of models holding gru_torch.GRU, and ONNX with ONNX's own GRU
operator, run in ONNX Runtime against PyTorch (both cells, bidirectional, 2 layers,
lengths)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gru_torch
from gru_torch import export, train
from gru_torch.models import ModelConfig, SentimentClassifier

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="export runs the compiled op")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]


class Wrapped(nn.Module):
    """A model holding gru_torch.GRU: its padded outputs and final states."""

    def __init__(self, reset_after: bool, bias: bool = True) -> None:
        super().__init__()
        self.gru = gru_torch.GRU(4, 5, num_layers=2, bias=bias, batch_first=True,
                                 bidirectional=True, reset_after=reset_after)

    def forward(self, x, lengths):
        return self.gru(x, lengths=lengths)


def inputs(B: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return torch.randn(B, T, 4, generator=g), lengths


def dims():
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    return ({0: batch, 1: time}, {0: batch})


def gru_nodes(path: Path) -> list:
    model = onnx.load(str(path))
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), "no custom ops"
    return [n for n in model.graph.node if n.op_type == "GRU"]


@pytest.mark.parametrize("reset_after,bias", [(True, True), (False, True), (True, False)])
def test_gru_onnx_runtime_matches_pytorch(tmp_path, reset_after, bias):
    torch.manual_seed(0)
    model = Wrapped(reset_after, bias).eval()
    path = export.to_onnx(model, inputs(3, 7, 0), tmp_path / "gru.onnx", dims(),
                          ["x", "lengths"], ["out", "h_n"])
    nodes = gru_nodes(path)
    assert len(nodes) == 2, "one ONNX GRU node per layer"
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["linear_before_reset"] == int(reset_after)
        assert attrs["direction"] == b"bidirectional" and attrs["hidden_size"] == 5
        assert node.input[4], "lengths reach sequence_lens"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B, T, seed in ((3, 7, 1), (1, 1, 2), (6, 12, 3)):  # other batch and time sizes
        x, lengths = inputs(B, T, seed)
        out, h_n = session.run(None, {"x": x.numpy(), "lengths": lengths.numpy()})
        with torch.no_grad():
            want_out, want_h = model(x, lengths)
        np.testing.assert_allclose(out, want_out.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(h_n, want_h.numpy(), atol=1e-5, rtol=0)
        past = torch.arange(T)[None, :] >= lengths[:, None]
        assert (out[past.numpy()] == 0).all(), "zeros past each row's length"


@pytest.mark.parametrize("reset_after", [True, False])
def test_classifier_onnx_matches_pytorch(tmp_path, reset_after):
    torch.manual_seed(1)
    model = SentimentClassifier(ModelConfig(vocab_size=60, embed_dim=8, hidden=[6, 5],
                                            bidirectional=True, reset_after=reset_after,
                                            pooling="last+max", head=[4]))
    args, shapes = export.classifier_inputs(model)
    path = export.to_onnx(model, args, tmp_path / "clf.onnx", shapes, ["ids", "lengths"],
                          ["logits"])
    assert model.training, "export leaves the model's mode as it was"
    assert [n.input[0] for n in gru_nodes(path)]
    err = export.onnx_max_error(model, path)
    assert err is not None and err < 1e-5


def test_torch_export_of_a_model_holding_gru():
    torch.manual_seed(2)
    model = Wrapped(reset_after=False)
    program = export.export_program(model, inputs(3, 7, 0), dims())
    assert any(n.target is torch.ops.gru_torch.gru_layer.default for n in program.graph.nodes)
    x, lengths = inputs(5, 9, 4)
    with torch.no_grad():
        got, want = program.module()(x, lengths), model.eval()(x, lengths)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_a_gru_the_fused_op_does_not_run_exports_through_export_layer():
    """backend='reference' (or a cell, device or dtype the fused op lacks): the layer is
    recorded as gru_torch::export_layer, which ONNX maps the same way."""
    torch.manual_seed(4)
    ref = nn.Sequential(gru_torch.GRU(3, 4, backend="reference"))
    x = torch.randn(5, 2, 3)
    program = export.export_program(ref, (x,))
    targets = {n.target for n in program.graph.nodes}
    assert torch.ops.gru_torch.export_layer.default in targets
    assert torch.ops.gru_torch.gru_layer.default not in targets
    with torch.no_grad():
        got, want = program.module()(x), ref(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_export_script(tmp_path):
    """scripts/export.py on a checkpoint: ONNX checked in ONNX Runtime, vocabulary beside
    it, and a torch.export program that loads and runs."""
    torch.manual_seed(3)
    config = {"preset": "tiny", "model": ModelConfig(vocab_size=30, embed_dim=6, hidden=[5],
                                                     reset_after=False).to_dict(),
              "num_words": 30, "maxlen": 50, "use_lengths": True}
    model = SentimentClassifier(ModelConfig(**config["model"]))
    ckpt = tmp_path / "best.pt"
    train.save_checkpoint(ckpt, model, torch.optim.Adam(model.parameters()), 0, train.History(),
                          config, ["the", "film"], None)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), "--checkpoint",
                           str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--pt2",
                           str(tmp_path / "m.pt2")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checked: ONNX Runtime matches PyTorch" in proc.stdout
    assert len(gru_nodes(tmp_path / "m.onnx")) == 1
    assert (tmp_path / "m.vocab.json").is_file()
    program = torch.export.load(tmp_path / "m.pt2")
    ids, lengths = torch.tensor([[1, 4, 5, 2]]), torch.tensor([4])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(ids, lengths), model.eval()(ids, lengths))
