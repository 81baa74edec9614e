#!/usr/bin/env python
"""Times gru_torch's fused GRU against nn.GRU (cuDNN on a GPU) and the reference loop
(--cell lstm, rnn_tanh or rnn_relu: its fused LSTM or RNN against nn.LSTM or nn.RNN).

Before timing anything it checks every shape: on a small slice of it (B<=8, T<=20) in
float64, the fused backend (and nn.GRU) must match the reference to 1e-8 in the output,
h_n, the input and hx gradients and every parameter gradient, or the script exits with
status 1. Then, per shape, dtype and pass ("forward" under torch.no_grad(), and
"forward+backward" with fixed random gradients for output and h_n), it runs the backends
fused and nn.GRU interleaved (each repeat runs both once, rotating the order), then the
reference on its own, and reports medians.

Usage (from the repository root, in the venv):
  python scripts/benchmark.py                          # the notebooks' shapes, CPU, float32
  python scripts/benchmark.py --shapes "8,20,4,8" --repeats 3 --no-save
  python scripts/benchmark.py --backends fused,cudnn --repeats 3 --warmup 1
  python scripts/benchmark.py --device cuda --shapes sweep --dtype float32,bfloat16
  python scripts/benchmark.py --shapes "64,100,32,64;256,50,64,64" --layers 2 --bidirectional
  python scripts/benchmark.py --recurrent-dropout 0.25     # training, fused vs reference
  python scripts/benchmark.py --reference-max-steps 300 --reference-repeats 1 --threads 1
  python scripts/benchmark.py --record                   # into benchmarks/results/ (idle machine)
  python scripts/benchmark.py --mode alternate --backends fused,cudnn,onnxruntime --repeats 7
  python scripts/benchmark.py --mode alternate --vary-t     # each round a different T
  python scripts/benchmark.py --mode alternate --busy 1     # quiet, then with a core burned
  python scripts/benchmark.py --mode alternate --loss final --backends fused,fused+ftz,cudnn,cudnn+ftz
  python scripts/benchmark.py --cell lstm --shapes "8,20,16,16" --backends fused,cudnn,onnxruntime
  python scripts/benchmark.py --cell rnn_relu --mode alternate --repeats 7

--cell picks the layer: gru (the default), lstm (gru_torch.LSTM against nn.LSTM and ONNX's
LSTM operator), rnn_tanh or rnn_relu (gru_torch.RNN with that nonlinearity against nn.RNN
and ONNX's RNN operator). Everything else works as for the GRU: the check (an LSTM's c_n,
cx gradient and c_n gradient too), the passes, the modes and the losses ("final" reads the
last layer's h_n, not an LSTM's c_n); the report names the cell's nn module, and the
results' file names end in -<cell> (runs/bench/<device>-lstm.json).

--loss picks what the training step's loss reads: "all" (every output and h_n, fixed
random gradients; out.sum() in --mode alternate) or "final" (a classifier's: the last
layer's h_n alone, as a loss averaged over the batch, with inputs of an embedding's scale,
U(-0.05, 0.05)). With "final" the gradient decays through the steps and, in float32, into
denormal numbers, which Intel cores process up to a hundred times slower. A backend
name with "+ftz" runs that backend with denormals flushed to zero on every thread
(gru_torch.flush_denormal()), as a caller that sets it would: "cudnn+ftz" is nn.GRU at
its best, "fused+ftz" tells how much the fused op's own flushing leaves on the table.

--mode alternate, --busy and the GEMM floor are described in scripts/bench_modes.py, the
onnxruntime backend (forward only) in scripts/bench_onnxruntime.py.

Results: runs/bench/<device>.json (cpu-<cpu model> or the GPU's name, as a slug;
<device>-<cell>.json for a --cell other than gru, which the JSON records as "cell"), the
printed report as markdown beside it (.md) and a speedup plot (.png); --out picks another
path. --record writes them to benchmarks/results/ instead, the figures the README quotes,
and refuses while the load average says other work is running (--force records anyway,
with a warning).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

import gru_torch
from gru_torch import GRU, LSTM, RNN, machine, ops
from gru_torch.cellspec import Cell
from gru_torch.train import pyplot

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
import bench_modes  # noqa: E402
import bench_onnxruntime  # noqa: E402

BACKENDS = ("fused", "cudnn", "reference", "onnxruntime")
FTZ = "+ftz"  # a backend run with denormals flushed to zero by the caller
AVX2 = "+avx2"  # the fused op run with its AVX2 loops where it would pick AVX-512
BACKEND_CHOICES = BACKENDS + tuple(b + FTZ for b in ("fused", "cudnn", "reference")) \
    + ("fused" + AVX2,)
LOSSES = ("all", "final")
EMBEDDING_SCALE = 0.05  # --loss final's inputs: U(-0.05, 0.05), Keras's Embedding init
DEFAULT_BACKENDS = "fused,cudnn,reference"
MODES = ("interleaved", "alternate")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NOTEBOOK_SHAPES = "32,200,128,128;512,200,50,100;512,500,100,32;100,300,1,50"
CHECK_TOLERANCE = 1e-8
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
RUNS_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench"
RECORD_MAX_LOAD = 0.5  # --record refuses above this 1-minute load average
CELLS = {"gru": Cell("gru"), "lstm": Cell("lstm"), "rnn_tanh": Cell("rnn", activation="tanh"),
         "rnn_relu": Cell("rnn", activation="relu")}


def cell_title(cell: str) -> str:
    """"GRU", "LSTM" or "RNN": the layer's name (an RNN's nonlinearity aside)."""
    return CELLS[cell].kind.upper()


def cell_label(cell: str) -> str:
    """cell_title with an RNN's nonlinearity: "GRU", "LSTM", "RNN (tanh)", "RNN (relu)"."""
    spec = CELLS[cell]
    return cell_title(cell) + (f" ({spec.activation})" if spec.kind == "rnn" else "")


def nn_name(cell: str) -> str:
    """"nn.GRU", "nn.LSTM" or "nn.RNN": the "cudnn" backend's module."""
    return f"nn.{cell_title(cell)}"


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    I: int
    H: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        values = [int(v) for v in text.split(",") if v.strip().isdigit()]
        if len(values) != 4 or len(text.split(",")) != 4 or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"a shape is four positive ints B,T,I,H, got {text!r}")
        return cls(*values)

    def __str__(self) -> str:
        return f"B={self.B} T={self.T} I={self.I} H={self.H}"


def parse_shapes(spec: str, device: str) -> list[Shape]:
    if spec == "sweep":  # on a CPU, a smaller grid: the GPU's would take hours on a few cores
        grid = (((16, 64, 256, 1024), (32, 64, 128, 256), (50, 200, 1000)) if device == "cuda"
                else ((16, 64, 256), (32, 64, 128), (50, 200)))
        return [Shape(B, T, H, H) for B, H, T in itertools.product(*grid)]
    spec = NOTEBOOK_SHAPES if spec == "notebooks" else spec
    return [Shape.parse(s.strip()) for s in spec.split(";") if s.strip()]


def parse_list(values: list[str], allowed) -> list[str]:
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not items or any(v not in allowed for v in items):
        raise argparse.ArgumentTypeError(f"got {items}; choose from {list(allowed)}")
    return list(dict.fromkeys(items))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--cell", choices=tuple(CELLS), default="gru",
                   help="the layer timed: gru_torch.GRU, LSTM or RNN (tanh or relu) against "
                        "nn.GRU, nn.LSTM or nn.RNN (default gru)")
    p.add_argument("--shapes", default="notebooks", help="notebooks | sweep | B,T,I,H[;B,T,I,H...]")
    p.add_argument("--dtype", action="append", help="float32 | bfloat16; repeatable or a comma list")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help="comma list of fused,cudnn,reference,onnxruntime (onnxruntime: forward "
                        "only); +ftz after fused, cudnn or reference runs it with denormals "
                        "flushed to zero by the caller; fused+avx2 runs the fused op's "
                        "AVX2 loops where it would pick its AVX-512 ones")
    p.add_argument("--loss", choices=LOSSES, default="all",
                   help="what a training step's loss reads: all (every output) or final (the "
                        "last layer's h_n, as a classifier's loss; inputs of an embedding's scale)")
    p.add_argument("--mode", choices=MODES, default="interleaved",
                   help="interleaved: medians of each backend; alternate: median of per-round "
                        "ratios, training steps out.sum().backward() with fresh gradients")
    p.add_argument("--vary-t", action="store_true",
                   help="--mode alternate: each round's T drawn from [T/2, T]")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="measure quietly, then again with N processes burning a core each")
    p.add_argument("--reference-repeats", type=int, default=3,
                   help="repeats for the slow reference backend (at most --repeats; default 3)")
    p.add_argument("--reference-max-steps", type=int, default=None,
                   help="skip the reference where T*layers*directions exceeds this (default: never)")
    p.add_argument("--recurrent-dropout", type=float, default=0.0,
                   help="P>0: time training with recurrent dropout P, fused vs reference only")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime's threads spin-wait after each run, its default "
                        "(off here: the spinning takes the cores of the backend timed next)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's choice)")
    p.add_argument("--out", type=Path, help="JSON path (default runs/bench/<device>.json, or "
                                            "benchmarks/results/<device>.json with --record; "
                                            "<device>-<cell>.json for a --cell other than gru)")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--record", action="store_true",
                   help="write to benchmarks/results/ (refused while the machine is busy)")
    p.add_argument("--force", action="store_true", help="--record even on a busy machine")
    args = p.parse_args(argv)
    try:
        args.shapes = parse_shapes(args.shapes, args.device)
        args.dtype = parse_list(args.dtype or ["float32"], DTYPES)
        args.backends = parse_list([args.backends], BACKEND_CHOICES)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if min(args.layers, args.repeats, args.reference_repeats) < 1 or args.warmup < 0 \
            or (args.threads is not None and args.threads < 1):
        p.error("--layers, --repeats, --reference-repeats, --threads must be >= 1, --warmup >= 0")
    if not 0 <= args.recurrent_dropout < 1:
        p.error("--recurrent-dropout must lie in [0, 1)")
    if args.busy < 0:
        p.error("--busy must be >= 0")
    if args.vary_t and args.mode != "alternate":
        p.error("--vary-t needs --mode alternate")
    if args.mode == "alternate":  # tens of times slower: the reference has no place in turns
        args.backends = [b for b in args.backends if base_backend(b) != "reference"]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.record and args.no_save:
        p.error("--record and --no-save contradict each other")
    return args


def busy_refusal(force: bool) -> str | None:
    """Why --record must not write now (None: go ahead). With force, a warning instead."""
    load = machine.load_average()
    if load is None or load <= RECORD_MAX_LOAD:
        return None
    why = (f"the 1-minute load average is {load:.2f} (over {RECORD_MAX_LOAD}): other work "
           "is running and would skew the timings")
    if force:
        print(f"warning: {why}; recording anyway (--force)", file=sys.stderr)
        return None
    return f"not recording: {why}; wait for it to fall, or pass --force"


def base_backend(name: str) -> str:
    """"fused+ftz" -> "fused": the backend a name runs."""
    return name.removesuffix(FTZ).removesuffix(AVX2)


def with_ftz(name: str, step: Callable) -> Callable:
    """The step, inside gru_torch.flush_denormal() for a "+ftz" backend, or with the fused
    op's AVX2 loops for "fused+avx2" (gru_torch.set_cpu_capability)."""
    if name.endswith(AVX2):
        def on_avx2(*args) -> None:
            before = gru_torch.set_cpu_capability("avx2")
            try:
                step(*args)
            finally:
                gru_torch.set_cpu_capability(before)
        return on_avx2
    if not name.endswith(FTZ):
        return step

    def flushed(*args) -> None:
        with gru_torch.flush_denormal():
            step(*args)
    return flushed


def build_modules(shape: Shape, args: argparse.Namespace, dtype: torch.dtype,
                  device: torch.device, backends: list[str]) -> dict[str, nn.Module]:
    """One module per backend, all with the same weights; "cudnn" is a plain nn.GRU (nn.LSTM,
    nn.RNN for --cell) and "onnxruntime" an OrtRNN session (checked against it on a sample
    input)."""
    def make(backend: str) -> nn.Module:
        kw = {"bidirectional": args.bidirectional, "device": device, "dtype": dtype,
              "recurrent_dropout": args.recurrent_dropout, "backend": backend}
        if args.cell == "gru":
            return GRU(shape.I, shape.H, args.layers, **kw)
        if args.cell == "lstm":
            return LSTM(shape.I, shape.H, args.layers, **kw)
        return RNN(shape.I, shape.H, args.layers, nonlinearity=CELLS[args.cell].activation, **kw)

    base = make("reference")
    modules = {name: base.to_torch() if base_backend(name) == "cudnn" else make(base_backend(name))
               for name in backends if name != "onnxruntime"}
    for module in modules.values():  # to_torch() copied them already; the others need it
        module.load_state_dict(base.state_dict())
    if "onnxruntime" in backends:
        nn_module = base.to_torch()
        ort = bench_onnxruntime.OrtRNN(nn_module, torch.get_num_threads(), args.ort_spinning)
        sample = torch.randn(min(shape.T, 20), min(shape.B, 8), shape.I, dtype=dtype)
        bench_onnxruntime.check(ort, nn_module, sample)
        modules["onnxruntime"] = ort
    return modules


def make_inputs(shape: Shape, args: argparse.Namespace, dtype: torch.dtype,
                device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """x [T, B, I] and fixed random gradients for output [T, B, D*H] and h_n [L*D, B, H].
    With --loss final, x is of an embedding's scale and h_n's gradient a batch mean's."""
    D, kw = 2 if args.bidirectional else 1, {"dtype": dtype, "device": device}
    if args.loss == "final":
        x = (torch.rand(shape.T, shape.B, shape.I, **kw) * 2 - 1) * EMBEDDING_SCALE
        return (x, torch.zeros(shape.T, shape.B, D * shape.H, **kw),
                torch.randn(args.layers * D, shape.B, shape.H, **kw) / shape.B)
    return (torch.randn(shape.T, shape.B, shape.I, **kw),
            torch.randn(shape.T, shape.B, D * shape.H, **kw),
            torch.randn(args.layers * D, shape.B, shape.H, **kw))


def fused_unavailable(device: torch.device, dtype: torch.dtype, cell: str = "gru") -> str | None:
    status = gru_torch.extension_status()  # may lack the op while it is being rebuilt
    if not status.loaded:
        return f"not loaded: {status.reason}"
    why = ops.unsupported_reason(device, dtype)
    if why or cell == "gru":
        return why
    # e.g. an LSTM on a GPU, where the fused kernels compute the GRU alone
    return gru_torch.backends.fused_reason(gru_torch.backends.Config(device, dtype, CELLS[cell]))


def outputs_and_grads(module: nn.Module, x: Tensor, h0: Tensor, g_out: Tensor,
                      g_h: Tensor, c0: Tensor | None = None,
                      g_c: Tensor | None = None) -> dict[str, Tensor]:
    """The outputs and every gradient of one training step; an LSTM's (c0 given) with
    c_n, its gradient g_c and cx's gradient too."""
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    module.train().zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # the same recurrent-dropout masks for every backend
    if c0 is None:
        out, h_n = module(x, h0)
        torch.autograd.backward((out, h_n), (g_out, g_h))
        found = {"output": out, "h_n": h_n, "grad input": x.grad, "grad hx": h0.grad}
    else:
        c0 = c0.clone().requires_grad_()
        out, (h_n, c_n) = module(x, (h0, c0))
        torch.autograd.backward((out, h_n, c_n), (g_out, g_h, g_c))
        found = {"output": out, "h_n": h_n, "c_n": c_n, "grad input": x.grad,
                 "grad hx": h0.grad, "grad cx": c0.grad}
    return found | {f"grad {n}": p.grad for n, p in module.named_parameters()}


def check_shape(shape: Shape, args: argparse.Namespace, device: torch.device) -> str:
    """Compares fused (and nn.GRU, nn.LSTM or nn.RNN) with the reference on a slice of
    shape; exits on a mismatch."""
    why = fused_unavailable(device, torch.float64, args.cell)
    if why:
        return f"check {shape}: SKIPPED, the fused op is unavailable: {why}"
    small = Shape(min(shape.B, 8), min(shape.T, 20), shape.I, shape.H)
    others = ["fused"] + (["cudnn"] if "cudnn" in args.backends and not args.recurrent_dropout else [])
    modules = build_modules(small, args, torch.float64, device, ["reference"] + others)
    x, g_out, g_h = make_inputs(small, args, torch.float64, device)
    h0 = torch.randn_like(g_h)
    lstm = args.cell == "lstm"  # its c0 and c_n's gradient
    c0, g_c = (torch.randn_like(g_h), torch.randn_like(g_h)) if lstm else (None, None)
    expected = outputs_and_grads(modules["reference"], x, h0, g_out, g_h, c0, g_c)
    for name in others:
        got = outputs_and_grads(modules[name], x, h0, g_out, g_h, c0, g_c)
        for key, want in expected.items():
            err = (got[key] - want).abs().max().item()
            if not err <= CHECK_TOLERANCE:  # also catches NaN
                sys.exit(f"CHECK FAILED on {small} (slice of {shape}): {name} and reference "
                         f"differ in {key} by {err:.3g} (tolerance {CHECK_TOLERANCE:g}); not timing.")
    return f"check {shape}: ok on {small} in float64, {' and '.join(others)} vs reference"


def make_step(module: nn.Module, pass_: str, x: Tensor, g_out: Tensor, g_h: Tensor,
              loss: str = "all") -> Callable[[], None]:
    if isinstance(module, bench_onnxruntime.OrtRNN):
        return lambda: module.run(x)
    if pass_ == "forward":
        module.eval()

        def forward() -> None:
            with torch.no_grad():
                module(x)
        return forward
    module.train()
    x = x.detach().requires_grad_()

    D = g_out.shape[-1] // g_h.shape[-1]

    def forward_backward() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        out, state = module(x)
        h_n = bench_modes.hidden(state)  # an LSTM's h_n: its loss reads no c_n
        if loss == "final":  # the last layer's state alone, as a classifier reads it
            torch.autograd.backward(h_n[-D:], g_h[-D:])
        else:
            torch.autograd.backward((out, h_n), (g_out, g_h))
    return forward_backward


def time_ms(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step()
    return (time.perf_counter() - t0) * 1e3


def measure(steps: dict[str, Callable[[], None]], repeats: dict[str, int], warmup: int,
            device: torch.device) -> dict[str, list[float]]:
    """Interleaved: each round runs every backend still short of its repeats once, the
    order changing from round to round (bench_modes.round_order), so drifts in machine
    load hit all alike and no backend always follows the same one."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names, times = list(steps), {name: [] for name in steps}
    for r in range(max(repeats.values())):
        for name in bench_modes.round_order(names, r):
            if len(times[name]) < repeats[name]:
                times[name].append(time_ms(steps[name], device))
    return times


def skip_reason(name: str, shape: Shape, args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype) -> str | None:
    """Why backend `name` is left out of this case, or None."""
    steps = shape.T * args.layers * (2 if args.bidirectional else 1)
    if name.endswith(AVX2) and (device.type != "cpu" or gru_torch.cpu_capability() != "avx512"):
        return "the fused op runs no AVX-512 loops here to compare its AVX2 ones with"
    name = base_backend(name)
    if name == "fused":
        why = fused_unavailable(device, dtype, args.cell)
        failed = None if why else ops.self_check_failure(device, dtype, CELLS[args.cell])
        return why or (f"the fused kernel failed its self-check: {failed}" if failed else None)
    if name == "onnxruntime":
        if args.recurrent_dropout:
            return "onnxruntime times inference only"
        return bench_onnxruntime.unavailable(args.layers, dtype, device, cell_title(args.cell))
    if name == "cudnn" and args.recurrent_dropout:
        return f"{nn_name(args.cell)} has no recurrent dropout"
    if name == "reference" and args.reference_max_steps is not None and steps > args.reference_max_steps:
        return f"T*layers*directions = {steps} > --reference-max-steps {args.reference_max_steps}"
    return None


def runnable_backends(shape: Shape, dtype_name: str, args: argparse.Namespace,
                      device: torch.device) -> list[str]:
    """The asked-for backends that can run this case; a line for each one left out."""
    backends = []
    for name in args.backends:
        why = skip_reason(name, shape, args, device, DTYPES[dtype_name])
        if why:
            print(f"  {shape} {dtype_name}: skipping {name}: {why}")
        else:
            backends.append(name)
    return backends


def bench_case(shape: Shape, dtype_name: str, args: argparse.Namespace,
               device: torch.device) -> list[dict]:
    """Times every pass of one (shape, dtype) for the backends that can run it: JSON rows."""
    dtype = DTYPES[dtype_name]
    backends = runnable_backends(shape, dtype_name, args, device)
    if not backends:
        return []
    modules = build_modules(shape, args, dtype, device, backends)
    x, g_out, g_h = make_inputs(shape, args, dtype, device)
    repeats = {n: min(args.repeats, args.reference_repeats) if base_backend(n) == "reference"
               else args.repeats for n in backends}
    rate = bench_modes.gemm_rate(shape, device, gates=CELLS[args.cell].gates) \
        if device.type == "cpu" else None
    rows = []
    for pass_ in ["forward+backward"] if args.recurrent_dropout else ["forward", "forward+backward"]:
        steps = {n: with_ftz(n, make_step(m, pass_, x, g_out, g_h, args.loss))
                 for n, m in modules.items() if pass_ == "forward" or n != "onnxruntime"}
        # fused and nn.GRU side by side; the reference, tens of times slower, on its own
        # afterwards: its many small allocations leave the allocator's heap warm, which
        # would make nn.GRU's next run look faster than it is in its own training loop.
        fast = {n: s for n, s in steps.items() if base_backend(n) != "reference"}
        slow = {n: s for n, s in steps.items() if base_backend(n) == "reference"}
        timed = {}
        for group in (fast, slow):
            if group:
                timed.update(measure(group, {n: repeats[n] for n in group}, args.warmup, device))
        print(f"  {shape} {dtype_name} {pass_}: " + ", ".join(
            f"{n} {statistics.median(t):.4g} ms" for n, t in timed.items()), flush=True)
        for name, times in timed.items():
            rows.append({**asdict(shape), "layers": args.layers, "bidirectional": args.bidirectional,
                         "dtype": dtype_name, "pass": pass_, "backend": name, "loss": args.loss,
                         "median_ms": statistics.median(times),
                         "us_per_step": statistics.median(times) * 1e3 / shape.T, "repeats": len(times),
                         "recurrent_dropout": args.recurrent_dropout})
            if name == "fused" and rate:
                rows[-1]["gemm_floor_ms"] = bench_modes.floor_ms(pass_flops(shape, args, pass_), rate)
    return rows


POOL_OFF_NOTE = (
    "The buffer pool is off, and this machine's kernel hands freed memory back to its host "
    "(free page reporting, gru_torch.machine.returns_free_memory): the fused op's buffers, "
    "mapped fresh for every call, then pay a fault on the host some of the time, which "
    "makes its training times vary from round to round at large shapes.")


def pass_flops(shape: Shape, args: argparse.Namespace, pass_: str, T: int | None = None) -> float:
    """The GEMM FLOPs of one pass (forward+backward: 3x the forward's), at T steps."""
    s = shape if T is None else Shape(shape.B, T, shape.I, shape.H)
    return forward_flops(s, args.layers, 2 if args.bidirectional else 1,
                         CELLS[args.cell].gates)[2] * (3 if "backward" in pass_ else 1)


def bench_case_alternate(shape: Shape, dtype_name: str, args: argparse.Namespace,
                         device: torch.device) -> list[dict]:
    """--mode alternate for one (shape, dtype): JSON rows (see scripts/bench_modes.py)."""
    dtype = DTYPES[dtype_name]
    backends = runnable_backends(shape, dtype_name, args, device)
    if not backends:
        return []
    modules = build_modules(shape, args, dtype, device, backends)
    ort = modules.pop("onnxruntime", None)
    x = make_inputs(shape, args, dtype, device)[0]
    rate = bench_modes.gemm_rate(shape, device, gates=CELLS[args.cell].gates)
    lengths = bench_modes.round_lengths(shape.T, args.repeats, args.vary_t)
    if args.loss == "final":
        x = (torch.rand_like(x) * 2 - 1) * EMBEDDING_SCALE
    base = {**asdict(shape), "layers": args.layers, "bidirectional": args.bidirectional,
            "dtype": dtype_name, "recurrent_dropout": args.recurrent_dropout, "loss": args.loss}
    rows = []
    for pass_ in ["forward+backward"] if args.recurrent_dropout else ["forward", "forward+backward"]:
        steps = {n: with_ftz(n, step) for n, step in
                 bench_modes.alternate_steps(modules, ort, x, pass_, args.loss).items()}
        times = bench_modes.alternate(steps, lengths, args.warmup, shape.T)
        print(f"  {shape} {dtype_name} {pass_}: " + ", ".join(
            f"{n} {statistics.median(t) * 1e3:.4g} ms" for n, t in times.items()), flush=True)
        rows += bench_modes.alternate_rows(shape, pass_, times, lengths,
                                           lambda T: pass_flops(shape, args, pass_, T), rate, base)
    return rows


def forward_flops(shape: Shape, layers: int, directions: int,
                  gates: int = 3) -> tuple[int, int, int]:
    """GEMM FLOPs: (recurrent, per step and layer-direction; layer 0's input GEMM over all
    steps, per direction; the whole forward), for a cell of `gates` gate blocks (GRU 3,
    LSTM 4, RNN 1)."""
    G = gates * shape.H
    recurrent = 2 * shape.B * shape.H * G
    inputs = [2 * shape.T * shape.B * (shape.I if k == 0 else directions * shape.H) * G
              for k in range(layers)]
    return recurrent, inputs[0], directions * (layers * shape.T * recurrent + sum(inputs))


def flop(n: float) -> str:
    scale, unit = next((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")) if n >= s)
    return f"{n / scale:.3g} {unit}FLOP"


def napkin(shape: Shape, layers: int, directions: int, gates: int = 3) -> str:
    recurrent, input_gemm, total = forward_flops(shape, layers, directions, gates)
    G = f"{gates}H" if gates > 1 else "H"
    return (f"{shape}: recurrent GEMM 2*B*H*{G} = {flop(recurrent)}/step ({flop(shape.T * recurrent)} "
            f"over T, in sequence); input GEMM 2*T*B*I*{G} = {flop(input_gemm)} (one GEMM, all "
            f"steps); forward, {layers} layer(s) x {directions} direction(s): {flop(total)}; "
            f"forward+backward ~3x that")


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return (f"{value:.2f}" if unit == "x" else f"{value:.0f}" if value >= 100 else f"{value:.3g}") + unit


def render_table(rows: list[dict], cell: str = "gru") -> str:
    cases: dict[tuple, dict[str, float]] = {}
    floors: dict[tuple, float] = {}
    for row in rows:
        key = (Shape(row["B"], row["T"], row["I"], row["H"]), row["layers"],
               row["bidirectional"], row["dtype"], row["pass"])
        cases.setdefault(key, {})[row["backend"]] = row["median_ms"]
        if "gemm_floor_ms" in row:
            floors[key] = row["gemm_floor_ms"]
    nn_ = nn_name(cell)
    lines = [f"| B,T,I,H | dtype | pass | fused ms | {nn_} ms | reference ms | onnxruntime ms "
             f"| fused us/step | fused GFLOP/s | fused vs {nn_} | fused vs reference "
             "| fused vs onnxruntime | GEMM floor ms | fused / GEMM floor |", "|" + "---|" * 14]
    for key, ms in cases.items():
        shape, layers, bidi, dtype, pass_ = key
        fused = ms.get("fused")
        flops = forward_flops(shape, layers, 2 if bidi else 1, CELLS[cell].gates)[2] * (
            3 if "backward" in pass_ else 1)
        per_step, rate = (fused * 1e3 / shape.T, flops / fused / 1e6) if fused else (None, None)
        speedups = [ms[n] / fused if fused and n in ms else None
                    for n in ("cudnn", "reference", "onnxruntime")]
        floor = fused / floors[key] if fused and key in floors else None
        cells = [f"{shape.B},{shape.T},{shape.I},{shape.H}", dtype, pass_,
                 *(fmt(ms.get(n)) for n in BACKENDS), fmt(per_step), fmt(rate),
                 *(fmt(v, "x") for v in speedups), fmt(floors.get(key)), fmt(floor, "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return machine.cpu_model()


def default_out(device: torch.device, name: str, record: bool = False, cell: str = "gru") -> Path:
    """<folder>/<device>.json, or <device>-<cell>.json for a cell other than the GRU."""
    if device.type == "cpu":  # "AMD EPYC 7763 64-Core Processor" -> "cpu-amd-epyc-7763"
        name = "cpu " + re.sub(r"\((R|TM)\)|@.*|\bCPU\b|\bProcessor\b|\b\d+-Core\b", " ", name, flags=re.I)
    name += "" if cell == "gru" else f" {cell}"  # rnn_tanh -> "-rnn-tanh"
    folder = RESULTS_DIR if record else RUNS_DIR
    return folder / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".json")


def plot_speedups(rows: list[dict], path: Path, title: str, cell: str = "gru") -> bool:
    """Bars of the fused op's speedup over nn.GRU (nn.LSTM, nn.RNN) and over the
    reference, per case."""
    plt = pyplot()
    if plt is None:
        return False
    cases: dict[str, dict[str, float]] = {}
    for row in rows:
        label = f"{row['B']},{row['T']},{row['I']},{row['H']}\n{row['dtype']} {row['pass']}"
        cases.setdefault(label, {})[row["backend"]] = row["median_ms"]
    cases = {k: v for k, v in cases.items() if "fused" in v and len(v) > 1}
    if not cases:
        return False
    names = [n for n in ("cudnn", "reference") if any(n in v for v in cases.values())]
    if not names:  # e.g. --backends fused,cudnn+ftz,onnxruntime: no bars to draw
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cases)), 4.2))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(cases))]
        ys = [v[name] / v["fused"] if name in v else 0 for v in cases.values()]
        bars = ax.bar(xs, ys, width, label=f"fused vs {nn_name(cell) if name == 'cudnn' else name}")
        ax.bar_label(bars, labels=[f"{y:.2f}x" if y else "" for y in ys], fontsize=7)
    ax.axhline(1.0, color="k", linewidth=0.8)
    top = max(v[n] / v["fused"] for v in cases.values() for n in names if n in v)
    ax.set_ylim(0, max(top, 1.0) * 1.25)
    ax.set_xticks(range(len(cases)), list(cases), fontsize=7)
    ax.set_ylabel("speedup (their ms / fused ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", ncol=len(names))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.record:
        refusal = busy_refusal(args.force)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
    device = torch.device(args.device)
    if args.threads:  # on a small shared box, 1 thread avoids stalls when another process runs
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = {"device": device_name(device), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "threads": torch.get_num_threads()}
    if device.type == "cpu":  # the fused op's loops: avx512 or avx2 (gru_torch.cpu_capability)
        env["cpu_capability"] = gru_torch.cpu_capability()
        env["pool_mb"] = os.environ.get("GRU_TORCH_CPU_POOL_MB")  # None: the pool's default
        env["returns_free_memory"] = machine.returns_free_memory()
    if args.cell != "gru":  # a GRU's files stay as before --cell: no "cell" means gru
        env["cell"] = args.cell
    if "onnxruntime" in args.backends:
        env["ort_spinning"] = args.ort_spinning
    print(", ".join(f"{k}: {v}" for k, v in env.items()))
    for shape in args.shapes:
        print(check_shape(shape, args, device), flush=True)
    case = bench_case_alternate if args.mode == "alternate" else bench_case

    def measure_all() -> list[dict]:
        return [row for shape in args.shapes for dtype in args.dtype
                for row in case(shape, dtype, args, device)]

    rows = measure_all()
    tables = [bench_modes.render_alternate(rows, nn_name(args.cell)) if args.mode == "alternate"
              else render_table(rows, args.cell)]
    if args.busy:
        print(f"again, with {args.busy} process(es) burning a core each:", flush=True)
        with bench_modes.burning(args.busy):
            busy = bench_modes.busy_rows(rows, measure_all(), args.busy)
        rows += busy
        tables += ["", f"With {args.busy} process(es) burning a core each (slowdown = busy ms / "
                       "quiet ms, both measured in this run):", "",
                   bench_modes.render_busy(busy, nn_name(args.cell))]
    env["mode"] = args.mode
    directions = 2 if args.bidirectional else 1
    dropout = f", recurrent_dropout={args.recurrent_dropout}" if args.recurrent_dropout else ""
    spec = CELLS[args.cell]
    nonlinearity = f", nonlinearity={spec.activation}" if spec.kind == "rnn" else ""
    how = (f"median of {args.repeats} per-round ratios (alternating, fresh gradients"
           f"{', T varying in [T/2, T]' if args.vary_t else ''})" if args.mode == "alternate"
           else f"median ms of {args.repeats} repeats ({min(args.repeats, args.reference_repeats)} "
                "for the reference)")
    report = "\n".join([
        f"# {cell_title(args.cell)} benchmark: {env['device']}", "",
        f"torch {env['torch']}, cuDNN {env['cudnn']}, {env['threads']} threads, layers={args.layers}, "
        f"bidirectional={args.bidirectional}{nonlinearity}{dropout}; {how}, "
        f"after {args.warmup} warm-up run(s)."
        + ("" if "ort_spinning" not in env else " ONNX Runtime's threads "
           + ("spin-wait after each run (its default)." if args.ort_spinning
              else "do not spin-wait after a run (scripts/bench_onnxruntime.py says why).")), "",
        *([POOL_OFF_NOTE, ""] if env.get("returns_free_memory") and env.get("pool_mb") == "0"
          else []),
        *tables, "", "Napkin math (GEMM FLOPs):",
        *(f"- {napkin(shape, args.layers, directions, spec.gates)}" for shape in args.shapes), ""])
    print("\n" + report)
    if not args.no_save:
        out = args.out or default_out(device, env["device"], args.record, args.cell)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**env, "rows": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(report)
        plotted = plot_speedups(rows, out.with_suffix(".png"),
                                f"gru_torch fused {cell_label(args.cell)}: "
                                f"{env['device']}, {env['threads']} threads", args.cell)
        print(f"wrote {out}, {out.with_suffix('.md')}"
              + (f" and {out.with_suffix('.png')}" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
