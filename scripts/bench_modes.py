"""Timing modes of scripts/benchmark.py beyond its default interleaved medians.

- alternate: nn.GRU (nn.LSTM, nn.RNN with --cell), the fused op (and onnxruntime,
  forward only) take turns in one
  process, one step each per round in an order that changes (round_order), every training step
  `out.sum().backward()` with the input requiring grad and fresh gradients (as a training
  loop has them). Each round gives ratios of the others' times to the fused op's; the
  report is their median. --vary-t draws each round's T from [T/2, T] (the same for every
  backend), as length-bucketed training batches vary.
- busy: measure once quietly, then again while N processes each burn one core, and
  report every backend's slowdown.
- the GEMM floor: the op's GEMM FLOPs at the best rate torch.mm reaches in this run, warm,
  on the products that hold them: [T*B, H] x [H, G] (the recurrent products of all steps
  as one large GEMM; G = 3H for a GRU, 4H for an LSTM, H for an RNN) and [T*B, I] x [I, G]
  (the input projection). No implementation that computes those FLOPs at torch.mm's rate
  runs faster than the floor: "fused / GEMM floor" is how far the fused op is from doing
  nothing but its GEMMs, and "nn.LSTM / GEMM floor" (nn.GRU, nn.RNN) is the most that any
  such implementation could gain over torch.nn's.
"""
from __future__ import annotations

import contextlib
import random
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

NAMES = {"fused": "fused", "cudnn": "nn.GRU", "onnxruntime": "onnxruntime", "reference": "reference"}


def display_name(backend: str, nn_name: str = "nn.GRU") -> str:
    """"cudnn+ftz" -> "nn.GRU (FTZ)": a backend run with denormals flushed by the caller;
    nn_name names the "cudnn" backend (nn.LSTM, nn.RNN for those cells)."""
    base = backend.removesuffix("+ftz").removesuffix("+avx2")
    names = {**NAMES, "cudnn": nn_name}
    return names.get(base, base) + (" (FTZ)" if backend.endswith("+ftz") else
                                    " (AVX2)" if backend.endswith("+avx2") else "")


def hidden(state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """h_n of a module's final state: an LSTM's is (h_n, c_n), the others' h_n alone."""
    return state[0] if isinstance(state, tuple) else state


def gemm_rate(shape, device: torch.device, repeats: int = 10, gates: int = 3,
              warm_s: float = 0.3) -> float:
    """The best GFLOP/s of torch.mm, warm (after warm_s seconds of the same product), on
    [T*B, K] x [K, gates*H] for K = H and K = I (the recurrent and the input products): the
    fastest of `repeats` runs of each, and the faster of the two."""
    best = 0.0
    for K in sorted({shape.H, shape.I}):
        a = torch.randn(shape.T * shape.B, K, device=device)
        w = torch.randn(K, gates * shape.H, device=device)
        out = torch.mm(a, w)

        def run() -> float:
            t0 = time.perf_counter()
            torch.mm(a, w, out=out)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

        t_end = time.perf_counter() + warm_s
        while time.perf_counter() < t_end:
            run()
        fastest = min(run() for _ in range(repeats))
        best = max(best, 2 * a.shape[0] * K * gates * shape.H / fastest / 1e9)
    return best


def floor_ms(gemm_flops: float, rate_gflops: float) -> float:
    return gemm_flops / rate_gflops / 1e6


def round_lengths(T: int, rounds: int, vary: bool, seed: int = 0) -> list[int]:
    """Each round's T: the full T, or drawn from [T/2, T] (the same draw for every run)."""
    if not vary:
        return [T] * rounds
    rng = random.Random(seed)
    return [rng.randint(max(1, T // 2), T) for _ in range(rounds)]


def alternate_steps(modules: dict[str, nn.Module], ort, x: Tensor, pass_: str,
                    loss: str = "all") -> dict[str, Callable[[int], None]]:
    """One step per backend, taking the round's T: forward under no_grad (eval), or a
    training step with fresh gradients, its loss out.sum() (loss "all") or, as a
    classifier's, the last layer's h_n averaged over the batch (loss "final"; an LSTM's
    h_n, not its c_n)."""
    steps: dict[str, Callable[[int], None]] = {}
    for name, module in modules.items():
        if pass_ == "forward":
            module.eval()

            def forward(T: int, m=module) -> None:
                with torch.no_grad():
                    m(x[:T])
            steps[name] = forward
        else:
            module.train()

            def train_step(T: int, m=module) -> None:
                m.zero_grad(set_to_none=True)
                xt = x[:T].detach().requires_grad_()
                out, state = m(xt)
                if loss == "final":
                    h_n = hidden(state)
                    D = out.shape[-1] // h_n.shape[-1]
                    (h_n[-D:].sum() / x.shape[1]).backward()
                else:
                    out.sum().backward()
            steps[name] = train_step
    if ort is not None and pass_ == "forward":
        steps["onnxruntime"] = lambda T: ort.run(x[:T])
    return steps


def round_order(names: list[str], r: int) -> list[str]:
    """Round r's order of turns: the list rotated by r, and reversed every other pass
    through the rotations. A rotation alone keeps the cyclic order, so each backend would
    always run right after the same one, and inherit what it leaves behind: with the op's
    buffer pool off, the fused op always after nn.GRU, whose freed heap leaves no free
    huge pages, ran 1.4-2x slower than the same op after itself (512,500,100,32)."""
    order = names if (r // max(len(names), 1)) % 2 == 0 else names[::-1]
    k = r % max(len(order), 1)
    return order[k:] + order[:k]


def alternate(steps: dict[str, Callable[[int], None]], lengths: list[int], warmup: int,
              T: int) -> dict[str, list[float]]:
    """Per-round seconds of every step, in round_order's turns."""
    for step in steps.values():
        for _ in range(warmup):
            step(T)
    names, times = list(steps), {name: [] for name in steps}
    for r, length in enumerate(lengths):
        for name in round_order(names, r):
            t0 = time.perf_counter()
            steps[name](length)
            times[name].append(time.perf_counter() - t0)
    return times


def alternate_rows(shape, pass_: str, times: dict[str, list[float]], lengths: list[int],
                   flops_of: Callable[[int], float], rate: float, base: dict) -> list[dict]:
    """JSON rows of one alternate case: each backend's median ms, and the median over
    rounds of its time divided by the fused op's, with the lowest and highest round's; and
    of each backend's time over the GEMM floor."""
    fused = times.get("fused")
    rows = []
    for name, ts in times.items():
        row = {**base, "pass": pass_, "backend": name, "mode": "alternate",
               "median_ms": statistics.median(ts) * 1e3, "repeats": len(ts),
               "lengths": sorted(set(lengths)) if len(set(lengths)) > 1 else None}
        if fused and name != "fused":
            ratios = [t / f for t, f in zip(ts, fused)]
            row["median_ratio_to_fused"] = statistics.median(ratios)
            row["ratio_to_fused_range"] = [min(ratios), max(ratios)]
        if name == "fused":
            row["gemm_floor_ms"] = statistics.median(floor_ms(flops_of(L), rate) for L in lengths)
        row["median_ratio_to_floor"] = statistics.median(
            t * 1e3 / floor_ms(flops_of(L), rate) for t, L in zip(ts, lengths))
        rows.append(row)
    return rows


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    return (f"{value:.2f}" if unit == "x" else f"{value:.0f}" if value >= 100 else f"{value:.3g}") + unit


def fmt_ratio(row: dict | None) -> str:
    """The median ratio, with the rounds' range beside it: "2.03x (1.91-2.12)"."""
    if not row or row.get("median_ratio_to_fused") is None:
        return "-"
    lo, hi = row.get("ratio_to_fused_range") or (None, None)
    spread = f" ({lo:.2f}-{hi:.2f})" if lo is not None and row["repeats"] > 1 else ""
    return fmt(row["median_ratio_to_fused"], "x") + spread


def render_alternate(rows: list[dict], nn_name: str = "nn.GRU") -> str:
    """One line per case: each backend's median ms, then each other backend's median ratio
    to the fused op's (with the rounds' range), and the fused op's and torch.nn's times over
    the GEMM floor. nn_name: the "cudnn" backend's name in the header."""
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (f"{row['B']},{row['T']},{row['I']},{row['H']}", row["pass"])
        cases.setdefault(key, {})[row["backend"]] = row
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    others = [b for b in backends if b != "fused"]
    floored = [b for b in ("fused", "cudnn") if b in backends]
    header = (["B,T,I,H", "pass"] + [f"{display_name(b, nn_name)} ms" for b in backends]
              + [f"{display_name(b, nn_name)} / fused (rounds' range)" for b in others]
              + [f"{display_name(b, nn_name)} / GEMM floor" for b in floored])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (shape, pass_), by in cases.items():
        get = lambda name, key: by.get(name, {}).get(key)  # noqa: E731
        lines.append("| " + " | ".join([
            shape, pass_, *(fmt(get(n, "median_ms")) for n in backends),
            *(fmt_ratio(by.get(n)) for n in others),
            *(fmt(get(n, "median_ratio_to_floor"), "x") for n in floored)]) + " |")
    return "\n".join(lines)


BURN = "while True:\n    pass\n"


@contextlib.contextmanager
def burning(n: int) -> Iterator[None]:
    """n processes, each spinning on one core, for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(n)]
    try:
        time.sleep(1.0)  # let them start and the scheduler spread them
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def busy_rows(quiet: list[dict], busy: list[dict], n: int) -> list[dict]:
    """Each backend's busy row with its quiet time and slowdown (busy ms / quiet ms)."""
    key = lambda r: (r["B"], r["T"], r["I"], r["H"], r["pass"], r["backend"])  # noqa: E731
    before = {key(r): r for r in quiet}
    rows = []
    for r in busy:
        q = before.get(key(r))
        if q:
            rows.append({**r, "busy": n, "quiet_ms": q["median_ms"],
                         "slowdown": r["median_ms"] / q["median_ms"]})
    return rows


def render_busy(rows: list[dict], nn_name: str = "nn.GRU") -> str:
    lines = ["| B,T,I,H | pass | backend | quiet ms | busy ms | slowdown |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['B']},{r['T']},{r['I']},{r['H']} | {r['pass']} | "
                     f"{display_name(r['backend'], nn_name)} | {fmt(r['quiet_ms'])} | "
                     f"{fmt(r['median_ms'])} | {fmt(r['slowdown'], 'x')} |")
    return "\n".join(lines)
