#!/usr/bin/env python
"""Notebook C's three models, written in Keras as the notebook writes them, run by Keras 3
on its torch backend with gru_torch.keras's recurrent layers: model.fit, evaluate and
predict on the IMDB reviews.

  python scripts/keras_notebook_c.py --data ../shared/data/aclImdb_v1-text.tar.gz
  python scripts/keras_notebook_c.py --data sample --epochs 1 --limit-train 64 --limit-test 32

The notebook's code is unchanged but for the line that imports the recurrent layers
(`--layers keras` runs Keras's own instead) and the data loader: gru_torch.data's
load_data and pad_sequences return what keras.datasets.imdb.load_data and
keras.utils.pad_sequences return, from a local copy of the reviews. Each model's
parameter count is checked against the notebook's printed summary. --results writes the
accuracies, parameter counts and seconds per epoch as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
    sys.exit(f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}: gru_torch.keras runs on Keras's torch "
             "backend; unset it or set KERAS_BACKEND=torch")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gru_torch.data import imdb, pad_sequences  # noqa: E402
from gru_torch.machine import cpu_model, load_average  # noqa: E402

# Notebook C's printed summaries: Embedding(10000, 128), one layer of 128, Dense(1)
NOTEBOOK = {"rnn128": ("SimpleRNN", 1313025, 0.7497), "lstm128": ("LSTM", 1411713, 0.8518),
            "gru128": ("GRU", 1379201, 0.8608)}
MAX_FEATURES, MAXLEN, BATCH_SIZE = 10000, 200, 32


def notebook_model(recurrent_layer):
    """Notebook C's model, as it writes it."""
    from keras.layers import Dense, Embedding
    from keras.models import Sequential

    model = Sequential()
    model.add(Embedding(MAX_FEATURES, 128))
    model.add(recurrent_layer(128))
    model.add(Dense(1, activation="sigmoid"))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["acc"])
    return model


class EpochTimer:
    """Seconds of each epoch's training batches (Keras's callback hooks)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.last = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(self.last - self.t0)
        return Timer()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="the IMDB archive or folder, or 'sample'")
    p.add_argument("--models", nargs="+", choices=list(NOTEBOOK), default=list(NOTEBOOK))
    p.add_argument("--layers", choices=["gru_torch", "keras"], default="gru_torch",
                   help="gru_torch.keras's layers (default) or keras.layers' own")
    p.add_argument("--epochs", type=int, default=5, help="the notebook's 5")
    p.add_argument("--limit-train", type=int, default=None, help="the first N training reviews")
    p.add_argument("--limit-test", type=int, default=None, help="the first N test reviews")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=None, help="write the results here (JSON)")
    args = p.parse_args(argv)

    import keras

    if args.layers == "gru_torch":
        from gru_torch.keras import GRU, LSTM, SimpleRNN  # the notebook's one changed line
    else:
        from keras.layers import GRU, LSTM, SimpleRNN
    layers = {"GRU": GRU, "LSTM": LSTM, "SimpleRNN": SimpleRNN}

    (x_train, y_train), (x_test, y_test) = imdb.load_data(args.data, num_words=MAX_FEATURES)
    x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    x_test, y_test = x_test[:args.limit_test], y_test[:args.limit_test]
    x_train = pad_sequences(x_train, maxlen=MAXLEN)
    x_test = pad_sequences(x_test, maxlen=MAXLEN)
    print(f"train {x_train.shape}, test {x_test.shape}; Keras {keras.__version__} on "
          f"{keras.backend.backend()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {cpu_model()}, load average {load_average()}; {args.layers} layers",
          flush=True)

    results = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "keras": keras.__version__,
               "torch": torch.__version__, "layers": args.layers, "epochs": args.epochs,
               "train": len(x_train), "test": len(x_test), "seed": args.seed, "models": {}}
    failed = False
    for name in args.models:
        layer_name, params, reported = NOTEBOOK[name]
        keras.utils.set_random_seed(args.seed)
        model = notebook_model(layers[layer_name])
        model.build((None, MAXLEN))
        model.summary()
        count = model.count_params()
        if count != params:
            print(f"{name}: {count} parameters, the notebook's summary has {params}")
            failed = True
        timer = EpochTimer()
        load_before = load_average()
        history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=BATCH_SIZE,
                            validation_split=0.2, callbacks=[timer], verbose=2)
        loss, acc = model.evaluate(x_test, y_test, batch_size=BATCH_SIZE, verbose=0)
        probabilities = model.predict(x_test[:8], verbose=0)
        agrees = float(np.mean((probabilities[:, 0] > 0.5) == (y_test[:8] == 1)))
        print(f"{name}: test accuracy {acc:.4f} (notebook {reported:.4f}), loss {loss:.4f}; "
              f"seconds per epoch {[round(s, 1) for s in timer.seconds]}; predict on 8 "
              f"reviews agrees with their labels on {agrees:.0%}", flush=True)
        results["models"][name] = {
            "layer": layer_name, "params": count, "notebook_params": params,
            "test_accuracy": acc, "test_loss": loss, "notebook_accuracy": reported,
            "epoch_seconds": timer.seconds, "val_acc": history.history.get("val_acc"),
            "load_average": [load_before, load_average()]}
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
