#!/usr/bin/env python
"""Trains every notebook preset on the full data, as its notebook did, one after another,
and writes a table of parameters, the notebook's accuracy, ours and seconds per epoch.

  python scripts/train_presets.py --data ../shared/data/aclImdb_v1-text.tar.gz [--only NAME ...]

Each run goes to runs/presets/<name>/ (checkpoints, history, metrics.json); the table to
benchmarks/results/presets-<machine>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_torch import machine, presets  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="IMDB archive or folder (needed unless --collect)")
    ap.add_argument("--only", nargs="*", help="preset names (default: all)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "presets")
    ap.add_argument("--machine", default=f"cpu-{torch.get_num_threads()}threads")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                    help="where the table goes")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: tabulate the finished runs already in --runs")
    args = ap.parse_args(argv)
    names = args.only or list(presets.PRESETS)
    rows = []
    for name in names:
        p = presets.get(name)
        out = args.runs / name
        if args.collect:
            if not (out / "metrics.json").is_file():
                print(f"{name}: no finished run in {out}; left out")
                continue
        else:
            if not args.data:
                ap.error("--data is required unless --collect")
            cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", name,
                   "--data", args.data, "--out", str(out)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
        params = presets.count_parameters(presets.build(name))
        if params != p.keras_params:
            raise SystemExit(f"error: {name} has {params:,} parameters, its Keras model "
                             f"{p.keras_params:,}")
        rows.append({"preset": name, "notebook": p.notebook, "params": params,
                     "keras_params": p.keras_params, "reported": p.reported,
                     "test_accuracy": metrics["test_accuracy"], "epochs": metrics["epochs"],
                     "recurrent_backend": metrics.get("recurrent_backend"),
                     "seconds_per_epoch": sum(r["seconds"] for r in history) / len(history)})
    res = args.results
    res.mkdir(parents=True, exist_ok=True)
    meta = {"machine": args.machine, "cpu": machine.cpu_model(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "rows": rows}
    (res / f"presets-{args.machine}.json").write_text(json.dumps(meta, indent=1))
    lines = [f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}", "",
             "| preset | notebook | params (= Keras's) | notebook's accuracy | ours | epochs "
             "| recurrent layers ran on | s/epoch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rep = f"{r['reported']:.2%}" if r["reported"] else "-"
        lines.append(f"| {r['preset']} | {r['notebook']} | {r['params']:,} | {rep} | "
                     f"{r['test_accuracy']:.2%} | {r['epochs']} | {r['recurrent_backend']} | "
                     f"{r['seconds_per_epoch']:.0f} |")
    (res / f"presets-{args.machine}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
