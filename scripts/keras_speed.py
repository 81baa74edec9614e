#!/usr/bin/env python
"""Seconds per training epoch of two notebook models written in Keras 3, on its torch
backend: Keras's own recurrent layers against gru_torch.keras's (and Keras on TensorFlow
where TensorFlow is installed, in a process of its own).

  python scripts/keras_speed.py
  python scripts/keras_speed.py --models gru128 --rounds 5 --batches 5

gru128 is notebook C's model (Embedding(10000, 128), GRU(128), Dense(1); adam, batch 32,
200 steps; 625 batches an epoch of 20,000 reviews), bilstm32x2 notebook E's
(Embedding(10000, 100), two Bidirectional(LSTM(32, dropout=0.5, recurrent_dropout=0.2)),
Dropout(0.5), Dense(1); rmsprop, batch 512, 500 steps; 40 batches an epoch). The batches
are random word ids (the time per batch does not depend on the words). Each round runs
`model.fit` on --batches batches of each variant in turn, the first round's batches
after a warm-up fit; a variant's seconds per batch is its median over every timed batch,
an epoch's that times the batches of an epoch. The table, headed by the CPU and the load
average, goes to benchmarks/results/keras/speed-<machine>.md and .json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

MODELS = {
    # name: (batch size, steps, batches per epoch)
    "gru128": (32, 200, 625),
    "bilstm32x2": (512, 500, 40),
}
VARIANTS = ("keras", "gru_torch")


def build(name: str, layers):
    import keras
    from keras.layers import Bidirectional, Dense, Dropout, Embedding
    from keras.models import Sequential

    if name == "gru128":
        model = Sequential([Embedding(10000, 128), layers.GRU(128),
                            Dense(1, activation="sigmoid")])
        model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["acc"])
    else:
        model = Sequential([
            Embedding(10000, 100),
            Bidirectional(layers.LSTM(32, dropout=0.5, recurrent_dropout=0.2,
                                      return_sequences=True)),
            Bidirectional(layers.LSTM(32, dropout=0.5, recurrent_dropout=0.2)),
            Dropout(0.5), Dense(1, activation="sigmoid")])
        model.compile(optimizer="rmsprop", loss="binary_crossentropy", metrics=["acc"])
    model.build((None, MODELS[name][1]))
    keras.utils.set_random_seed(0)
    return model


def batch_seconds(model, x, y, batch: int) -> list[float]:
    """Seconds of each batch of one model.fit over x."""
    import keras

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.t0)

    times: list[float] = []
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[Timer()])
    return times


def run_backend(args) -> dict:
    """This process's variants (Keras's layers, and gru_torch's on torch), alternating."""
    import keras
    import torch

    backend = keras.backend.backend()
    variants = VARIANTS if backend == "torch" else ("keras",)
    layer_sets = {"keras": keras.layers}
    if backend == "torch":
        import gru_torch.keras as gk
        layer_sets["gru_torch"] = gk
    rng = np.random.RandomState(0)
    out = {}
    for name in args.models:
        batch, steps, per_epoch = MODELS[name]
        x = rng.randint(1, 10000, size=(batch * args.batches, steps)).astype("int32")
        y = rng.randint(0, 2, size=(len(x), 1)).astype("float32")
        models = {v: build(name, layer_sets[v]) for v in variants}
        for v in variants:  # warm-up
            batch_seconds(models[v], x[:batch], y[:batch], batch)
        times = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants:
                times[v] += batch_seconds(models[v], x, y, batch)
                print(f"{name} {backend}/{v} round {r}: {times[v][-args.batches:]}", flush=True)
        out[name] = {f"{backend}/{v}": {"batch_seconds": times[v],
                                        "median_batch_s": statistics.median(times[v]),
                                        "epoch_s": statistics.median(times[v]) * per_epoch,
                                        "params": models[v].count_params()}
                     for v in variants}
    out["_versions"] = {"keras": keras.__version__, "backend": backend,
                        "torch": torch.__version__ if backend == "torch" else None,
                        "threads": torch.get_num_threads() if backend == "torch" else None}
    return out


def table(results: dict, meta: dict) -> str:
    lines = [f"# Keras 3 models: seconds per training epoch", "",
             f"{meta['cpu']}, {meta['threads']} threads, Keras {meta['keras']}, torch "
             f"{meta['torch']}; load average {meta['load_before']:.2f} before, "
             f"{meta['load_after']:.2f} after; {meta['rounds']} rounds of {meta['batches']} "
             f"batches per variant, alternating; medians; `python scripts/keras_speed.py`. "
             f"{meta['tensorflow']}", "",
             "| model | batch x steps | batches per epoch | Keras layers, torch backend (s) | "
             "gru_torch.keras, torch backend (s) | speed-up | Keras on TensorFlow (s) |",
             "|---|---|---|---|---|---|---|"]
    for name in meta["models"]:
        batch, steps, per_epoch = MODELS[name]
        r = results[name]
        k, g = r["torch/keras"]["epoch_s"], r["torch/gru_torch"]["epoch_s"]
        tf = r.get("tensorflow/keras", {}).get("epoch_s")
        lines.append(f"| {name} | {batch} x {steps} | {per_epoch} | {k:.1f} | {g:.1f} | "
                     f"{k / g:.1f}x | {'-' if tf is None else f'{tf:.1f}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=3, help="timed batches per round and variant")
    p.add_argument("--out", type=Path, default=None,
                   help="results stem (default benchmarks/results/keras/speed-<cpu>)")
    p.add_argument("--backend-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backend_only:  # a child process: this KERAS_BACKEND's variants as JSON
        print("RESULT " + json.dumps(run_backend(args)))
        return 0
    from gru_torch.machine import cpu_model, load_average

    meta = {"cpu": cpu_model(), "load_before": load_average() or 0.0, "rounds": args.rounds,
            "batches": args.batches, "models": args.models}
    backends = ["torch"]
    if importlib.util.find_spec("tensorflow") is not None:
        backends.append("tensorflow")
        meta["tensorflow"] = "Keras on TensorFlow ran in a process of its own."
    else:
        meta["tensorflow"] = "TensorFlow is not installed here: no Keras-on-TensorFlow column."
    results: dict = {name: {} for name in args.models}
    for backend in backends:
        cmd = [sys.executable, __file__, "--backend-only", "--rounds", str(args.rounds),
               "--batches", str(args.batches), "--models", *args.models]
        proc = subprocess.run(cmd, env=dict(os.environ, KERAS_BACKEND=backend),
                              capture_output=True, text=True)
        sys.stdout.write(proc.stdout.replace("RESULT ", "") if proc.returncode else
                         "".join(line + "\n" for line in proc.stdout.splitlines()
                                 if not line.startswith("RESULT ")))
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the {backend} run failed")
        found = json.loads(next(line[7:] for line in proc.stdout.splitlines()
                                if line.startswith("RESULT ")))
        versions = found.pop("_versions")
        if backend == "torch":
            meta.update(keras=versions["keras"], torch=versions["torch"], threads=versions["threads"])
        for name, r in found.items():
            results[name].update(r)
    meta["load_after"] = load_average() or 0.0
    stem = args.out or ROOT / "benchmarks" / "results" / "keras" / (
        "speed-" + meta["cpu"].lower().replace(" ", "-"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    md = table(results, meta)
    Path(f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
