"""Times one fused GRU layer on the CPU, by pass: what the op's own changes are measured with.

  f    forward under torch.no_grad() (no reserve kept)
  ft   forward with grad enabled (the reserve for the backward is written)
  fb   forward, then out.sum().backward() (the input requires grad)
  bwd  fb - ft: the backward's share

--loss final makes the backward a classifier's: the loss reads h_n alone, averaged over the
batch, and the input is of an embedding's scale (U(-0.05, 0.05)), so the gradient decays
through the steps, in float32 into denormal numbers (the op flushes them: csrc/README.md).

Each pass runs --warmup times, then --repeats times, and the median is printed; --per-call
prints every call's forward and backward milliseconds instead (on a busy machine the
spread is the point: a call that waits on a descheduled thread stands out).

Usage (from the repository root, in the venv):
  python scripts/time_layer.py --shape 512,200,50,100 --threads 1
  GRU_TORCH_CPU_POOL_MB=0 python scripts/time_layer.py --shape 32,200,128,128 --threads 2
  python scripts/time_layer.py --shape 32,200,128,128 --per-call --repeats 15
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import gru_torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import Shape, fused_unavailable  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=Shape.parse, default=Shape(512, 200, 50, 100), help="B,T,I,H")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--per-call", action="store_true", help="every call's forward and backward ms")
    p.add_argument("--loss", choices=("all", "final"), default="all",
                   help="all: out.sum(); final: h_n alone, as a classifier's loss")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    why = fused_unavailable(torch.device("cpu"), torch.float32)
    if why:
        print(f"error: the fused op cannot run: {why}", file=sys.stderr)
        return 2
    B, T, I, H = args.shape.B, args.shape.T, args.shape.I, args.shape.H
    torch.manual_seed(0)
    layer = gru_torch.GRU(I, H, backend="fused")
    x = torch.randn(T, B, I) if args.loss == "all" else (torch.rand(T, B, I) * 2 - 1) * 0.05

    def forward() -> None:
        with torch.no_grad():
            layer(x)

    def forward_train() -> torch.Tensor:
        out, h_n = layer(x.detach().requires_grad_())
        return out.sum() if args.loss == "all" else h_n.sum() / B

    def train_step() -> None:
        forward_train().backward()

    print(f"B,T,I,H = {B},{T},{I},{H}; {torch.get_num_threads()} thread(s); float32; loss "
          f"{'out.sum()' if args.loss == 'all' else 'h_n.sum() / B'}", flush=True)
    if args.per_call:
        for _ in range(args.warmup):
            train_step()
        fwd, bwd = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loss = forward_train()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
        print("forward ms: " + " ".join(f"{v:.1f}" for v in fwd))
        print("backward ms: " + " ".join(f"{v:.1f}" for v in bwd))
        return 0
    medians = {}
    for name, step in (("f", forward), ("ft", forward_train), ("fb", train_step)):
        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        medians[name] = statistics.median(times)
    print(" ".join(f"{k} {v:.1f}" for k, v in medians.items()) + f" bwd {medians['fb'] - medians['ft']:.1f}"
          + f"  (ms, median of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
