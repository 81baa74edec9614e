"""ONNX Runtime's own GRU, LSTM and RNN operators as a forward-only backend of
scripts/benchmark.py.

The graph is a single ONNX node built with onnx.helper, for a one-layer nn.GRU, nn.LSTM or
nn.RNN (--cell): the module's weights as W, R and B initializers, their gate blocks in
ONNX's order (gru_torch.export's: a GRU's r, z, n as ONNX's z, r, h, an LSTM's i, f, g, o
as ONNX's i, o, f, c; an RNN has one block) and B the concatenation of the input and
recurrent biases. A GRU node has linear_before_reset=1, which is nn.GRU's cell (the reset
gate scales h W_hn^T + b_hn); an RNN node's activation is Tanh or Relu, nn.RNN's
nonlinearity; an LSTM node gives Y_c (c_n) beside Y and Y_h. It runs in an
InferenceSession with as many intra-op threads as torch uses, with ONNX Runtime's default
settings otherwise but one: its intra-op threads do not spin-wait after a run
(session.intra_op.allow_spinning = 0). By default they keep spinning on their cores for a
while after each run, and in a benchmark that alternates backends in one process that
spinning runs during the next backend's timed call and takes its cores: at 32,200,128,128
on the 2-core development machine, `--mode alternate --backends fused,onnxruntime` timed
the fused forward at 22.4 ms after ONNX Runtime's spinning runs and 10.2 ms after
non-spinning ones, while `--backends onnxruntime` alone timed ONNX Runtime at 13.3 ms
spinning and 13.4 ms not. `scripts/benchmark.py --ort-spinning` keeps ONNX Runtime's default.
check() compares its output with the nn module's before anything is timed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gru_torch.cellspec import Cell

OPSET = 17
OPS = {nn.GRU: "GRU", nn.LSTM: "LSTM", nn.RNN: "RNN"}  # nn's module -> ONNX's operator


def unavailable(layers: int, dtype: torch.dtype, device: torch.device,
                op: str = "GRU") -> str | None:
    """Why this backend cannot run a case, or None when it can (op: the ONNX operator)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnx and onnxruntime are needed ({e}); pip install -r requirements-dev.txt"
    if device.type != "cpu":
        return "the onnxruntime backend runs on the CPU only"
    if dtype != torch.float32:
        return f"the onnxruntime backend runs float32 only, not {str(dtype).replace('torch.', '')}"
    if layers != 1:
        return f"the onnxruntime backend is one ONNX {op} node: --layers 1 only"
    return None


def onnx_op(module: nn.Module) -> str:
    """"GRU", "LSTM" or "RNN": the ONNX operator of an nn.GRU, nn.LSTM or nn.RNN."""
    return OPS[type(module)]


def cell_of(module: nn.Module) -> Cell:
    """gru_torch's Cell of an nn.GRU, nn.LSTM or nn.RNN."""
    kind = onnx_op(module).lower()
    return Cell(kind, activation=module.nonlinearity) if kind == "rnn" else Cell(kind)


def _onnx_rows(t: Tensor, H: int, blocks: tuple[int, ...]) -> Tensor:
    """nn's gate blocks of t (along dim 0, H rows each) in ONNX's order."""
    return torch.cat([t[b * H:(b + 1) * H] for b in blocks])


def onnx_model(module: nn.Module):
    """The ONNX model of a one-layer nn.GRU, nn.LSTM or nn.RNN (either direction count),
    input X [T, B, I]: one node of ONNX's operator of the same name."""
    from onnx import TensorProto, helper, numpy_helper

    # torch's gate blocks in ONNX's order, and the node's activation attributes
    from gru_torch.export import _ONNX_BLOCKS, _activations

    op, cell = onnx_op(module), cell_of(module)
    H, D = module.hidden_size, 2 if module.bidirectional else 1
    blocks = _ONNX_BLOCKS[cell.kind]
    suffixes = ["_l0"] + (["_l0_reverse"] if D == 2 else [])
    with torch.no_grad():
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if module.bias else ())
        rows = {name: torch.stack([_onnx_rows(getattr(module, name + s), H, blocks)
                                   for s in suffixes]) for name in names}
        b = (torch.cat([rows["bias_ih"], rows["bias_hh"]], dim=1) if module.bias
             else torch.zeros(D, 2 * len(blocks) * H))
    inits = [numpy_helper.from_array(t.detach().float().cpu().numpy(), name)
             for t, name in ((rows["weight_ih"], "W"), (rows["weight_hh"], "R"), (b, "B"))]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = {"linear_before_reset": 1} if op == "GRU" else _activations(cell, D)
    node = helper.make_node(op, ["X", "W", "R", "B"], outputs, hidden_size=H, **attrs,
                            direction="bidirectional" if D == 2 else "forward")
    graph = helper.make_graph(
        [node], op.lower(),
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", module.input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", D, "B", H])]
        + [helper.make_tensor_value_info(name, TensorProto.FLOAT, [D, "B", H])
           for name in outputs[1:]],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class OrtRNN:
    """Runs a one-layer nn.GRU's, nn.LSTM's or nn.RNN's weights through ONNX Runtime:
    __call__(x [T, B, I]) gives (output [T, B, D*H], h_n [D, B, H]), an LSTM's
    (output, (h_n, c_n)), as the nn module does."""

    def __init__(self, module: nn.Module, threads: int, spinning: bool = False):
        import onnxruntime as ort

        self.op = onnx_op(module)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_model(module).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def run(self, x: Tensor):
        """The raw session call: what the benchmark times."""
        return self.session.run(None, {"X": x.detach().numpy()})

    def __call__(self, x: Tensor):
        y, *states = self.run(x)
        y = torch.from_numpy(y)  # [T, D, B, H]
        T, D, B, H = y.shape
        states = [torch.from_numpy(s) for s in states]
        return (y.permute(0, 2, 1, 3).reshape(T, B, D * H),
                tuple(states) if self.op == "LSTM" else states[0])


OrtGRU = OrtRNN  # the name from before LSTM and RNN


def check(ort_module: OrtRNN, module: nn.Module, x: Tensor, tolerance: float = 1e-4) -> float:
    """Largest difference between ONNX Runtime's and the nn module's output and h_n (and
    an LSTM's c_n) in float32, from a zero initial state; raises if it exceeds `tolerance`."""
    with torch.no_grad():
        want_out, want_state = module.eval()(x)
    got_out, got_state = ort_module(x)
    pairs = [(got_out, want_out)] + (list(zip(got_state, want_state)) if ort_module.op == "LSTM"
                                     else [(got_state, want_state)])
    err = max((got - want).abs().max().item() for got, want in pairs)
    if not err <= tolerance:  # also catches NaN
        raise RuntimeError(f"onnxruntime's {ort_module.op} differs from nn.{ort_module.op} by "
                           f"{err:.3g} (tolerance {tolerance:g})")
    return err
