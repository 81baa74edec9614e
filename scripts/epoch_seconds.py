#!/usr/bin/env python
"""Seconds per training epoch of GRU presets, the fused op against nn.GRU where nn.GRU can
express the preset and against the reference loop where it cannot.

  python scripts/epoch_seconds.py --data ../shared/data/aclImdb_v1-text.tar.gz
  python scripts/epoch_seconds.py --data ... --only gru128 --epochs 2 --rounds 2

Each run is `scripts/train.py --preset NAME --backend B --epochs N` in its own process, the
backends taking turns within a round. An epoch's seconds are train.py's: the training
batches from the in-memory dataset through the optimizer step (validation and the test
evaluation are not in them); "run s" is the whole process, data loading from the token
cache and the test evaluation included. The table goes to
benchmarks/results/epoch-seconds-<machine>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_torch import backends, presets  # noqa: E402
from gru_torch.rnn_base import RNNBase  # noqa: E402

PRESETS = ("gru128", "gru100-recdrop", "gru32x2")


def baseline(name: str) -> str:
    """torch.nn's kernel where it can express the preset's model in training, else the
    reference loop."""
    model = presets.build(name)
    layers = [m for m in model.modules() if isinstance(m, RNNBase)]
    ok = all(backends.nn_reason(m.training_config(torch.device("cpu"))) is None for m in layers)
    return "cudnn" if ok else "reference"


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
            "recurrent_backend": metrics.get("recurrent_backend")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="IMDB archive or folder")
    ap.add_argument("--only", nargs="*", choices=PRESETS, help="presets (default: all three)")
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
        other = baseline(name)
        results = {"fused": [], other: []}
        for r in range(args.rounds):
            for backend in (["fused", other] if r % 2 == 0 else [other, "fused"]):
                results[backend].append(run(name, backend, args, args.runs / f"{name}-{backend}-{r}"))
        row = {"preset": name, "baseline": other, "epochs": args.epochs, "rounds": args.rounds}
        for backend, runs in results.items():
            key = "fused" if backend == "fused" else "baseline"
            row[f"{key}_epoch_s"] = statistics.median(s for x in runs for s in x["epoch_seconds"])
            row[f"{key}_run_s"] = statistics.median(x["run_seconds"] for x in runs)
        row["speedup"] = row["baseline_epoch_s"] / row["fused_epoch_s"]
        rows.append(row)
    res = args.results
    res.mkdir(parents=True, exist_ok=True)
    meta = {"machine": args.machine, "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    (res / f"epoch-seconds-{args.machine}.json").write_text(json.dumps(meta, indent=1) + "\n")
    names = {"cudnn": "nn.GRU", "reference": "reference"}
    lines = ["| preset | baseline | fused s/epoch | baseline s/epoch | fused speedup "
             "| fused run s | baseline run s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {names[r['baseline']]} | {r['fused_epoch_s']:.1f} | "
                     f"{r['baseline_epoch_s']:.1f} | {r['speedup']:.2f}x | {r['fused_run_s']:.0f} | "
                     f"{r['baseline_run_s']:.0f} |")
    (res / f"epoch-seconds-{args.machine}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
