"""ONNX Runtime's own GRU operator as a forward-only backend of scripts/benchmark.py.

The graph is a single ONNX GRU node built with onnx.helper: nn.GRU's weights as W, R and B
initializers in ONNX's z, r, h gate order, and linear_before_reset=1, which is nn.GRU's
cell (the reset gate scales h W_hn^T + b_hn). It runs in an InferenceSession with as
many intra-op threads as torch uses, with ONNX Runtime's default settings otherwise but
one: its intra-op threads do not spin-wait after a run (session.intra_op.allow_spinning
= 0). By default they keep spinning on their cores for a while after each run, and in a
benchmark that alternates backends in one process that spinning runs during the next
backend's timed call and takes its cores: at 32,200,128,128 on the 2-core development
machine, `--mode alternate --backends fused,onnxruntime` timed the fused forward at
22.4 ms after ONNX Runtime's spinning runs and 10.2 ms after non-spinning ones, while
`--backends onnxruntime` alone timed ONNX Runtime at 13.3 ms spinning and 13.4 ms not.
`scripts/benchmark.py --ort-spinning` keeps ONNX Runtime's default.
check() compares its output with nn.GRU's before anything is timed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

OPSET = 17


def unavailable(layers: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why this backend cannot run a case, or None when it can."""
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
        return "the onnxruntime backend is one ONNX GRU node: --layers 1 only"
    return None


def _zrn(t: Tensor, H: int) -> Tensor:
    """nn.GRU's gate blocks r, z, n (along dim 0) in ONNX's order z, r, h."""
    r, z, n = t.split(H, dim=0)
    return torch.cat([z, r, n])


def gru_model(gru: nn.GRU):
    """The ONNX model of a one-layer nn.GRU (either direction count), input X [T, B, I]."""
    from onnx import TensorProto, helper, numpy_helper

    H, D = gru.hidden_size, 2 if gru.bidirectional else 1
    suffixes = ["_l0"] + (["_l0_reverse"] if D == 2 else [])
    with torch.no_grad():
        w = torch.stack([_zrn(getattr(gru, "weight_ih" + s), H) for s in suffixes])
        r = torch.stack([_zrn(getattr(gru, "weight_hh" + s), H) for s in suffixes])
        if gru.bias:
            b = torch.stack([torch.cat([_zrn(getattr(gru, "bias_ih" + s), H),
                                        _zrn(getattr(gru, "bias_hh" + s), H)]) for s in suffixes])
        else:
            b = torch.zeros(D, 6 * H)
    inits = [numpy_helper.from_array(t.detach().float().cpu().numpy(), name)
             for t, name in ((w, "W"), (r, "R"), (b, "B"))]
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H,
                            linear_before_reset=1,
                            direction="bidirectional" if D == 2 else "forward")
    graph = helper.make_graph(
        [node], "gru",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", gru.input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", D, "B", H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [D, "B", H])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class OrtGRU:
    """Runs a one-layer nn.GRU's weights through ONNX Runtime: __call__(x [T, B, I]) gives
    (output [T, B, D*H], h_n [D, B, H]) as nn.GRU does."""

    def __init__(self, gru: nn.GRU, threads: int, spinning: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(gru_model(gru).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def run(self, x: Tensor):
        """The raw session call: what the benchmark times."""
        return self.session.run(None, {"X": x.detach().numpy()})

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, y_h = self.run(x)
        y = torch.from_numpy(y)  # [T, D, B, H]
        T, D, B, H = y.shape
        return y.permute(0, 2, 1, 3).reshape(T, B, D * H), torch.from_numpy(y_h)


def check(ort_gru: OrtGRU, gru: nn.GRU, x: Tensor, tolerance: float = 1e-4) -> float:
    """Largest difference between ONNX Runtime's and nn.GRU's output and h_n (float32,
    from a zero initial state); raises if it exceeds `tolerance`."""
    with torch.no_grad():
        want_out, want_h = gru.eval()(x)
    got_out, got_h = ort_gru(x)
    err = max((got_out - want_out).abs().max().item(), (got_h - want_h).abs().max().item())
    if not err <= tolerance:  # also catches NaN
        raise RuntimeError(f"onnxruntime's GRU differs from nn.GRU by {err:.3g} "
                           f"(tolerance {tolerance:g})")
    return err
