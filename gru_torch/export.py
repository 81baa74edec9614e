"""Exporting models that hold gru_torch's recurrent layers (GRU, LSTM, RNN), for
deployment without gru_torch.

`export_program` is torch.export.export for inference (eval mode, no gradients). Each
layer of a recurrent module becomes one node of the program (both directions in it):

- a GRU layer that the fused op computes (sigmoid gates; a device and dtype it
  implements; backend "auto" or "fused") is a `gru_torch::gru_layer` node, traced
  through its fake kernel, so the program runs the fused op;
- every other layer (LSTM, RNN, a GRU with hard-sigmoid gates or on a device or dtype
  the fused op lacks) is a `gru_torch::export_layer` node, registered by this module,
  which runs the reference loop (gru_torch.reference).
Load a saved program with `load_program`, which makes both ops known first.

`to_onnx` turns that program into ONNX with ONNX's own GRU, LSTM and RNN operators, one
node per layer, so ONNX Runtime (or any ONNX backend) runs it with no custom op:

- gate rows: torch's GRU (r, z, n) become ONNX's (z, r, h), its LSTM (i, f, g, o) ONNX's
  (i, o, f, c); an RNN has one block;
- reset_after=True is `linear_before_reset=1`; reset_after=False is `linear_before_reset=0`,
  which is exactly the Keras 2 / Cho cell;
- one bias (GRU reset_after=False, LSTM/RNN single_bias=True) is ONNX's Wb, with Rb = 0;
- recurrent_activation is the gates' ONNX activation f: Sigmoid, or HardSigmoid with
  alpha 0.2 (hard_sigmoid_keras2) or 1/6 (hard_sigmoid_keras3) and beta 0.5; an RNN's
  nonlinearity is Tanh or Relu;
- `lengths` becomes `sequence_lens`: ONNX's Y is zero past each row's length and Y_h
  (and an LSTM's Y_c) holds each row's state at its length, as gru_torch returns them;
- both directions are one bidirectional node; stacked layers are one node each.

ONNX's LSTM has no projection, so an LSTM with proj_size > 0 is refused by `to_onnx` (it
exports with `export_program`). ONNX Runtime's CPU GRU, LSTM and RNN kernels run float32
only: export float32 models for it.

ONNX needs the `onnx` and `onnxscript` packages (`pip install gru_torch[export]`, which
adds onnxruntime to run it).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import _ext, _inputs, backends, ops
from .cellspec import Cell
from .reference import rnn_layer_reference
from .rnn_base import RNNBase

ONNX_OPSET = 18


class ExportError(RuntimeError):
    """A model or environment that cannot be exported, with the reason."""


class UnsupportedSettingError(ExportError, ValueError):
    """A layer setting that the export target cannot express (a ValueError naming it)."""


# ---- the op that records a layer the fused op does not run
@torch.library.custom_op(
    "gru_torch::export_layer", mutates_args=(),
    schema="(Tensor input, Tensor hx, Tensor? cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
           "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, str kind, str activation, "
           "str recurrent_activation, bool reset_after) -> (Tensor, Tensor, Tensor)")
def export_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, kind, activation,
                 recurrent_activation, reset_after):
    """One layer of any cell (gru_torch.reference.rnn_layer_reference's shapes, no dropout
    masks) -> (output, h_n, c_n); c_n is empty for a cell without c. Inference only."""
    cell = Cell(kind, reset_after, activation, recurrent_activation)
    out, h_n, c_n = rnn_layer_reference(cell, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                        None, None, lengths)
    return out, h_n, input.new_empty(0) if c_n is None else c_n


@export_layer.register_fake
def _export_layer_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, kind, activation,
                       recurrent_activation, reset_after):
    T, B, _ = input.shape
    D, _, P = hx.shape
    c_n = input.new_empty(0) if cx is None else cx.new_empty(cx.shape)
    return input.new_empty((T, B, D * P)), hx.new_empty(hx.shape), c_n


def _export_layer_fn(cell: Cell, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, input_mask,
                     recurrent_mask, lengths):
    """rnn_base's layer function (ops.rnn_layer's arguments) on export_layer."""
    if input_mask is not None or recurrent_mask is not None:
        raise ExportError("dropout is active: export the model in eval mode")
    out, h_n, c_n = export_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                 cell.kind, cell.activation, cell.recurrent_activation,
                                 cell.reset_after)
    return out, h_n, c_n if cell.has_c else None


def _runs_fused(module: RNNBase) -> bool:
    """Whether export records `module`'s layers as the fused GRU op, gru_layer (else as
    export_layer: the family op's input projection and cells are not one node)."""
    w = getattr(module, module._flat_weights_names[0])
    cfg = backends.Config(w.device, w.dtype, module.cell)
    return (module.backend in ("auto", "fused") and backends.fused_reason(cfg) is None
            and ops.gru_op_reason(module.cell, False, "shared", False) is None)


def _export_forward(module: RNNBase, layer_fn, input, hx=None, lengths: Tensor | None = None):
    """RNNBase.forward in eval mode with every layer on layer_fn (no backend choice)."""
    call = _inputs.normalize(input, hx, lengths, module._spec())
    h0, c0 = module._initial_states(call)
    out, h_n, c_n = module._forward_layers(layer_fn, call.x, h0, c0, call.lengths)
    return call.restore.output(out), call.restore.hidden((h_n, c_n) if module.cell.has_c else h_n)


@contextlib.contextmanager
def _export_forwards(model: nn.Module):
    """Within it, each recurrent module of `model` runs its layers as export records them."""
    saved = []
    try:
        for m in model.modules():
            if isinstance(m, RNNBase):
                saved.append((m, m.__dict__.get("forward")))
                layer_fn = ops.rnn_layer if _runs_fused(m) else _export_layer_fn
                m.forward = functools.partial(_export_forward, m, layer_fn)
        yield
    finally:
        for m, forward in saved:
            del m.forward
            if forward is not None:
                m.forward = forward


def export_program(model: nn.Module, args: tuple, dynamic_shapes=None) -> torch.export.ExportedProgram:
    """torch.export.export of `model` in eval mode without gradients. Run the program's
    module under torch.no_grad() (it was traced without the autograd reserve)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _export_forwards(model):
            program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    return program


def load_program(path) -> torch.export.ExportedProgram:
    """torch.export.load of a program that export_program wrote (torch.export.save): its
    gru_layer nodes need the compiled op loaded, its export_layer nodes this module."""
    _ext.status()
    return torch.export.load(path)


# ---- ONNX: one ONNX GRU, LSTM or RNN node per layer
# torch's gate blocks in ONNX's order: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c)
_ONNX_BLOCKS = {"gru": (1, 0, 2), "lstm": (0, 3, 1, 2), "rnn": (0,)}
# recurrent_activation -> ONNX's HardSigmoid (alpha, beta); sigmoid is ONNX's default
_HARD_SIGMOIDS = {"hard_sigmoid_keras2": (0.2, 0.5), "hard_sigmoid_keras3": (1 / 6, 0.5)}


def _activations(cell: Cell, D: int) -> dict:
    """The ONNX node's activation attributes for `cell`, none where ONNX's defaults are it."""
    if cell.kind == "rnn":
        return {} if cell.activation == "tanh" else {"activations": ["Relu"] * D}
    if cell.recurrent_activation == "sigmoid":
        return {}
    alpha, beta = _HARD_SIGMOIDS[cell.recurrent_activation]
    names = (["HardSigmoid"] + ["Tanh"] * (cell.gates - 2)) * D  # GRU: f, g; LSTM: f, g, h
    # ONNX Runtime hands the alphas to the functions that take one (HardSigmoid), in turn;
    # a reader that pairs them with every function by position reads the same values.
    return {"activations": names, "activation_alpha": [alpha] * len(names),
            "activation_beta": [beta] * len(names)}


def _onnx_layer(cell: Cell, input, hx, cx, w_ih, w_hh, b_ih, b_hh, lengths):
    """ONNX for one layer of `cell`: one ONNX GRU, LSTM or RNN node (traced by onnxscript);
    returns (output [T, B, D*H], h_n, c_n or None)."""
    from onnxscript import opset18 as op

    D, H = w_hh.shape[0], w_hh.shape[2]
    blocks = _ONNX_BLOCKS[cell.kind]
    # one Gather with constant indices, folded into the weights
    order = op.Constant(value_ints=[b * H + j for b in blocks for j in range(H)])

    def onnx_rows(t):
        return t if len(blocks) == 1 else op.Gather(t, order, axis=1)

    bias = None
    if b_ih is not None:
        wb = onnx_rows(b_ih)
        rb = onnx_rows(b_hh) if b_hh is not None else op.Mul(wb, op.CastLike(0.0, wb))
        bias = op.Concat(wb, rb, axis=1)                                  # [D, 2G]
    seq = op.Cast(lengths, to=6) if lengths is not None else None          # int32
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward",
             **_activations(cell, D)}
    W, R = onnx_rows(w_ih), onnx_rows(w_hh)
    c_n = None
    if cell.kind == "lstm":
        y, h_n, c_n = op.LSTM(input, W, R, bias, seq, hx, cx, **attrs)
    elif cell.kind == "gru":
        y, h_n = op.GRU(input, W, R, bias, seq, hx, linear_before_reset=int(cell.reset_after),
                        **attrs)
    else:
        y, h_n = op.RNN(input, W, R, bias, seq, hx, **attrs)
    # Y [T, D, B, H] -> [T, B, D*H], the ops' output layout
    out = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    return out, h_n, c_n


def _empty_like_onnx(input):
    from onnxscript import opset18 as op

    return op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), input)


def _gru_layer_onnx(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, mask=None, lengths=None,
                    reset_after: bool = True, need_reserve: bool = False):
    """ONNX for one gru_torch::gru_layer call (sigmoid gates: the fused op's)."""
    if mask is not None:
        raise ExportError("recurrent dropout is active: export the model in eval mode")
    out, h_n, _ = _onnx_layer(Cell("gru", reset_after), input, hx, None, w_ih, w_hh, b_ih,
                              b_hh, lengths)
    return out, h_n, _empty_like_onnx(input)  # the reserve: unused


def _export_layer_onnx(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
                       lengths=None, kind: str = "gru", activation: str = "tanh",
                       recurrent_activation: str = "sigmoid", reset_after: bool = True):
    """ONNX for one gru_torch::export_layer call."""
    if w_hr is not None:  # refused before export by _check_onnx; never reached
        raise UnsupportedSettingError("ONNX's LSTM operator has no projection (proj_size)")
    cell = Cell(kind, reset_after, activation, recurrent_activation)
    out, h_n, c_n = _onnx_layer(cell, input, hx, cx, w_ih, w_hh, b_ih, b_hh, lengths)
    return out, h_n, _empty_like_onnx(input) if c_n is None else c_n


def _check_onnx(model: nn.Module) -> None:
    """Refuses, before exporting, a layer setting that ONNX's operators cannot express."""
    for name, m in model.named_modules():
        if isinstance(m, RNNBase) and m.proj_size > 0:
            raise UnsupportedSettingError(
                f"to_onnx: {name or 'the model'} is an LSTM with proj_size={m.proj_size}, "
                "and ONNX's LSTM operator has no projection: ONNX takes proj_size=0 only "
                "(export_program, torch.export, takes any proj_size)")


def to_onnx(model: nn.Module, args: tuple, path, dynamic_shapes=None,
            input_names=None, output_names=None) -> Path:
    """Writes `model` (called as model(*args)) as an ONNX file whose recurrent layers are
    ONNX GRU, LSTM and RNN nodes. dynamic_shapes as for torch.export (e.g. batch and
    time dimensions)."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install onnx onnxscript onnxruntime") from e
    _check_onnx(model)
    program = export_program(model, args, dynamic_shapes)
    table = {torch.ops.gru_torch.export_layer.default: _export_layer_onnx}
    if _ext.status().loaded:
        table[torch.ops.gru_torch.gru_layer.default] = _gru_layer_onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():  # no_grad: as the program was traced
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        onnx_program = torch.onnx.export(
            program, args, dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            input_names=input_names, output_names=output_names,
            custom_translation_table=table)
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
