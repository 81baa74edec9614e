#!/usr/bin/env python
"""Seconds per training epoch of every preset: the fused op against torch.nn's kernel where
torch.nn can express the preset and against the reference loop where it cannot. A preset
the fused op cannot run yet (an LSTM or a SimpleRNN) is timed once, on the backend that
`backend="auto"` picks for it.

  python scripts/epoch_seconds.py --data ../shared/data/aclImdb_v1-text.tar.gz
  python scripts/epoch_seconds.py --data ... --only gru128 --epochs 2 --rounds 2

Each run is `scripts/train.py --preset NAME --backend B --epochs N` in its own process, the
backends taking turns within a round. An epoch's seconds are train.py's: the training
batches from the in-memory dataset through the optimizer step (validation and the test
evaluation are not in them); "run s" is the whole process, data loading from the token
cache and the test evaluation included; "peak RSS" the process's peak resident memory
(train.py's metrics.json). The table, headed by the CPU's model name, goes to
benchmarks/results/epoch-seconds-<machine>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_torch import backends, cpu_capability, presets  # noqa: E402
from gru_torch.machine import cpu_model  # noqa: E402
from gru_torch.rnn_base import RNNBase  # noqa: E402

PRESETS = tuple(presets.PRESETS)
NAMES = {"fused": "fused", "cudnn": "torch.nn", "reference": "reference", "auto": "auto"}


def _layers(name: str) -> list:
    return [m for m in presets.build(name).modules() if isinstance(m, RNNBase)]


def baseline(name: str) -> str:
    """torch.nn's kernel where it can express the preset's model in training, else the
    reference loop."""
    ok = all(backends.nn_reason(m.training_config(torch.device("cpu"))) is None
             for m in _layers(name))
    return "cudnn" if ok else "reference"


def fused_runs(name: str) -> bool:
    """Whether the fused op runs every recurrent layer of the preset in training."""
    return all(backends.fused_reason(m.training_config(torch.device("cpu"))) is None
               for m in _layers(name))




def run(name: str, backend: str, args, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", name, "--backend",
           backend, "--epochs", str(args.epochs), "--data", args.data, "--out", str(out),
           "--device", "cpu"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {"epoch_seconds": [r["seconds"] for r in history], "run_seconds": round(seconds, 1),
            "recurrent_backend": metrics.get("recurrent_backend"),
            "peak_rss_mb": metrics.get("peak_rss_mb")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="IMDB archive or folder")
    ap.add_argument("--only", nargs="*", choices=PRESETS, help="presets (default: all)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per backend (default 1)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "epoch-seconds")
    ap.add_argument("--machine", default=f"cpu-{torch.get_num_threads()}threads")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                    help="where the table goes")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1:
        ap.error("--epochs and --rounds must be >= 1")
    rows = []
    for name in args.only or PRESETS:
        fused = fused_runs(name)
        other = baseline(name) if fused else "auto"
        results = {"fused": [], other: []} if fused else {other: []}
        for r in range(args.rounds):
            order = list(results) if r % 2 == 0 else list(results)[::-1]
            for backend in order:
                results[backend].append(run(name, backend, args, args.runs / f"{name}-{backend}-{r}"))
        row = {"preset": name, "baseline": other, "epochs": args.epochs, "rounds": args.rounds,
               "fused_epoch_s": None, "fused_run_s": None, "speedup": None}
        for backend, runs in results.items():
            key = "fused" if backend == "fused" else "baseline"
            row[f"{key}_epoch_s"] = statistics.median(s for x in runs for s in x["epoch_seconds"])
            row[f"{key}_run_s"] = statistics.median(x["run_seconds"] for x in runs)
            rss = [x["peak_rss_mb"] for x in runs if x.get("peak_rss_mb") is not None]
            row[f"{key}_peak_rss_mb"] = max(rss) if rss else None
            if key == "baseline":
                row["baseline_ran"] = runs[0]["recurrent_backend"]
        if fused:
            row["speedup"] = row["baseline_epoch_s"] / row["fused_epoch_s"]
        rows.append(row)
    res = args.results
    res.mkdir(parents=True, exist_ok=True)
    meta = {"machine": args.machine, "cpu": cpu_model(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": cpu_capability(), "rows": rows}
    (res / f"epoch-seconds-{args.machine}.json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [table(meta)]
    (res / f"epoch-seconds-{args.machine}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def table(meta: dict) -> str:
    """The Markdown table, headed by the machine it was measured on."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}", "",
             "| preset | baseline | fused s/epoch | baseline s/epoch | fused speedup "
             "| fused run s | baseline run s | fused peak RSS MiB | baseline peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in meta["rows"]:
        base = NAMES[r["baseline"]]
        if r["baseline"] == "auto":
            base += f" ({NAMES.get(r.get('baseline_ran'), r.get('baseline_ran'))})"
        lines.append(f"| {r['preset']} | {base} | {f(r['fused_epoch_s'], '.1f')} | "
                     f"{r['baseline_epoch_s']:.1f} | {f(r['speedup'], '.2f')}"
                     f"{'x' if r['speedup'] else ''} | {f(r['fused_run_s'], '.0f')} | "
                     f"{r['baseline_run_s']:.0f} | {f(r.get('fused_peak_rss_mb'), '.0f')} | "
                     f"{f(r.get('baseline_peak_rss_mb'), '.0f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
