#!/usr/bin/env python
"""A small run of every fused CUDA kernel, forward and backward, for compute-sanitizer
(`make gpu-check` runs it under memcheck and racecheck): each operand type on the
persistent path, both GRU cells, both directions, recurrent-dropout masks and lengths,
plus the per-step path (exact float32, float64, H > 128); then the family op's LSTM and
RNN kernels (tests/test_cuda_family.py's check). Exits 1 on a mismatch with the
reference (gru_torch.selfcheck's rule), 2 where there is no GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import gru_torch
from gru_torch import ops, selfcheck

CASES = [  # (dtype, tf32, H, reset_after)
    (torch.bfloat16, True, 20, True), (torch.bfloat16, True, 100, False),
    (torch.float16, True, 64, True), (torch.float32, True, 100, True),
    (torch.float32, True, 40, False), (torch.float32, False, 20, True),
    (torch.float64, False, 20, False), (torch.bfloat16, True, 130, True),
]


FAMILY_CASES = [  # (dtype label, cell, H)
    ("bf16", "tanh", 20), ("tf32", "relu", 100), ("bf16", "lstm", 20), ("tf32", "lstm", 40),
    ("f16", "lstm-hard2", 100),
]


def main() -> int:
    if not torch.cuda.is_available() or not gru_torch.extension_status().cuda:
        print("error: needs a CUDA GPU and gru_torch built with its CUDA kernels", file=sys.stderr)
        return 2
    failed = 0
    for dtype, tf32, H, reset_after in CASES:
        torch.backends.cudnn.allow_tf32 = tf32
        p = selfcheck.Problem(T=5, B=19, I=6, H=H, D=2, reset_after=reset_after, seed=H)
        args = selfcheck.make_args(p, dtype, torch.device("cuda"))
        go, gh = selfcheck.output_gradients(p)
        found = selfcheck.results(ops.gru_layer, args, go, gh)
        torch.cuda.synchronize()
        problems = selfcheck.mismatches(found, args, go, gh, selfcheck.precision_of(dtype))
        label = f"{str(dtype).replace('torch.', '')} tf32={tf32} H={H} reset_after={reset_after}"
        print(f"{label}: {'ok' if not problems else 'MISMATCH ' + '; '.join(problems)}", flush=True)
        failed += bool(problems)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_cuda_family import RnnProblem, check  # noqa: E402 (the tests' own check)

    for label, act, H in FAMILY_CASES:
        try:
            check("cuda", label, act, RnnProblem(T=5, B=19, I=6, H=H, D=2, seed=H))
            print(f"{label} {act} H={H}: ok", flush=True)
        except AssertionError as e:
            print(f"{label} {act} H={H}: MISMATCH {e}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
