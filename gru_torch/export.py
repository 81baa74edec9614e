"""Exporting models that hold gru_torch.GRU, for deployment without gru_torch.

`export_program` is torch.export.export for inference (eval mode, no gradients), where the
fused op appears as one `gru_torch::gru_layer` node per layer (traced through its fake
kernel). `to_onnx` turns that program into ONNX with ONNX's own GRU operator for each
layer, so ONNX Runtime (or any ONNX backend) runs it with no custom op:

- gates: torch's (r, z, n) rows become ONNX's (z, r, h);
- reset_after=True is `linear_before_reset=1`; reset_after=False is `linear_before_reset=0`,
  which is exactly the Keras 2 / Cho cell (its one bias is ONNX's Wb, with Rb = 0);
- `lengths` becomes `sequence_lens`: ONNX's Y is zero past each row's length and Y_h holds
  each row's state at its length, as gru_torch returns them;
- both directions are one bidirectional node; stacked layers are one node each.

Needs the compiled op (`gru_torch.extension_status()`) and, for ONNX, the `onnx` and
`onnxscript` packages (`pip install gru_torch[export]`, which adds onnxruntime to run it).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from . import _ext
from .gru import GRU

ONNX_OPSET = 18


class ExportError(RuntimeError):
    """A model or environment that cannot be exported, with the reason."""


def _check_exportable(model: nn.Module) -> int:
    """The count of gru_torch.GRU modules in model; raises where export cannot work."""
    if not _ext.status().loaded:
        raise ExportError(f"export needs the compiled gru_torch op: {_ext.status().reason}. "
                          + _ext.HOW_TO_BUILD)
    grus = [m for m in model.modules() if isinstance(m, GRU)]
    for m in grus:
        if m.backend not in ("auto", "fused"):
            raise ExportError(f"a GRU with backend={m.backend!r} cannot be exported; export "
                              "runs the fused op (backend 'auto' or 'fused')")
    from .rnn_base import RNNBase

    others = [m for m in model.modules() if isinstance(m, RNNBase) and not isinstance(m, GRU)]
    if others:
        raise ExportError(f"export maps gru_torch.GRU layers only; this model holds a "
                          f"gru_torch.{type(others[0]).__name__}")
    return len(grus)


def export_program(model: nn.Module, args: tuple, dynamic_shapes=None) -> torch.export.ExportedProgram:
    """torch.export.export of `model` in eval mode without gradients. Run the program's
    module under torch.no_grad() (it was traced without the autograd reserve)."""
    count = _check_exportable(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    found = sum(1 for n in program.graph.nodes
                if n.op == "call_function" and n.target is torch.ops.gru_torch.gru_layer.default)
    if count and not found:
        raise ExportError("the exported graph has no gru_torch::gru_layer node: the GRU did "
                          "not run the fused op (on this device and dtype it falls back)")
    return program


def _gru_layer_onnx(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, mask=None, lengths=None,
                    reset_after: bool = True, need_reserve: bool = False):
    """ONNX for one gru_torch::gru_layer call: one ONNX GRU node (traced by onnxscript)."""
    from onnxscript import opset18 as op

    if mask is not None:
        raise ExportError("recurrent dropout is active: export the model in eval mode")
    D, H = w_hh.shape[0], w_hh.shape[2]
    # rows (r, z, n) -> (z, r, n): one Gather with constant indices, folded into the weights
    order = op.Constant(value_ints=list(range(H, 2 * H)) + list(range(H)) + list(range(2 * H, 3 * H)))

    def zrh(t):
        return op.Gather(t, order, axis=1)

    bias = None
    if b_ih is not None:
        wb = zrh(b_ih)
        rb = zrh(b_hh) if b_hh is not None else op.Mul(wb, op.CastLike(0.0, wb))
        bias = op.Concat(wb, rb, axis=1)                                  # [D, 6H]
    seq = op.Cast(lengths, to=6) if lengths is not None else None          # int32
    y, y_h = op.GRU(input, zrh(w_ih), zrh(w_hh), bias, seq, hx, hidden_size=H,
                    direction="bidirectional" if D == 2 else "forward",
                    linear_before_reset=1 if reset_after else 0)
    # Y [T, D, B, H] -> [T, B, D*H], the op's output layout
    out = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    reserve = op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), input)  # unused
    return out, y_h, reserve


def to_onnx(model: nn.Module, args: tuple, path, dynamic_shapes=None,
            input_names=None, output_names=None) -> Path:
    """Writes `model` (called as model(*args)) as an ONNX file whose GRU layers are ONNX GRU
    nodes. dynamic_shapes as for torch.export (e.g. batch and time dimensions)."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install onnx onnxscript onnxruntime") from e
    program = export_program(model, args, dynamic_shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():  # no_grad: as the program was traced
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        onnx_program = torch.onnx.export(
            program, args, dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            input_names=input_names, output_names=output_names,
            custom_translation_table={torch.ops.gru_torch.gru_layer.default: _gru_layer_onnx})
    onnx_program.save(str(path))
    return path


def classifier_inputs(model: nn.Module, batch: int = 3, time: int = 9, use_lengths: bool = True,
                      seed: int = 0):
    """Example (ids, lengths) for a SentimentClassifier, and the dynamic batch and time
    dimensions for export."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (batch, time), generator=g)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}
    if not use_lengths:
        return (ids,), ({0: dims[0], 1: dims[1]},)
    lengths = torch.randint(1, time + 1, (batch,), generator=g)
    lengths[0] = time
    return (ids, lengths), ({0: dims[0], 1: dims[1]}, {0: dims[0]})


def onnx_max_error(model: nn.Module, path, use_lengths: bool = True, batches: int = 3,
                   seed: int = 1) -> float | None:
    """The largest |ONNX Runtime - PyTorch| over the logits of a few random classifier
    batches of different sizes, or None where onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for k in range(batches):
            inputs, _ = classifier_inputs(model, batch=1 + 3 * k, time=5 + 7 * k,
                                          use_lengths=use_lengths, seed=seed + k)
            feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
            got = torch.from_numpy(session.run(None, feed)[0])
            with torch.no_grad():
                want = model(*inputs)
            worst = max(worst, (got - want).abs().max().item())
    finally:
        model.train(was_training)
    return worst
