#!/usr/bin/env python
"""Writes tests/golden/keras2/*.npz: what tf_keras (Keras 2) recurrent layers compute on
random weights and inputs, for tests/test_keras_import.py, which checks
gru_torch.from_keras against them where TensorFlow is not installed (CI).

Each file holds the layer's serialized config (as a saved model stores it), tf_keras's
version, the weights, the input (and mask), and every output the layer returned. The
cases cover both GRU cells, LSTM, SimpleRNN, Bidirectional with each merge mode, Keras
2's hard sigmoid, go_backwards, return_sequences / return_state, no bias, and masks.

  pip install tensorflow-cpu tf_keras     # in an environment of its own (about 600 MB)
  python scripts/make_keras_golden.py     # then commit tests/golden/keras2/
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "keras2"

# name: (layer class, its arguments, Bidirectional merge mode or False, with a mask)
CASES = {
    "gru-keras22-cell": ("GRU", dict(units=5, reset_after=False, recurrent_activation="hard_sigmoid",
                                     return_sequences=True), False, False),
    "gru-reset-after-state": ("GRU", dict(units=4, return_state=True), False, False),
    "gru-backwards-no-bias": ("GRU", dict(units=3, go_backwards=True, use_bias=False,
                                          return_sequences=True, reset_after=False), False, False),
    "lstm-hard-sigmoid-backwards": ("LSTM", dict(units=4, recurrent_activation="hard_sigmoid",
                                                 go_backwards=True, return_sequences=True),
                                    False, False),
    "lstm-state-no-bias": ("LSTM", dict(units=5, return_state=True, use_bias=False), False, False),
    "simple-rnn-relu": ("SimpleRNN", dict(units=4, activation="relu", return_sequences=True),
                        False, False),
    "bilstm-ave": ("LSTM", dict(units=3, return_sequences=True), "ave", False),
    "bigru-keras22-concat-state": ("GRU", dict(units=3, reset_after=False,
                                               recurrent_activation="hard_sigmoid",
                                               return_state=True), "concat", False),
    "bisimple-rnn-sum": ("SimpleRNN", dict(units=3), "sum", False),
    "gru-masked": ("GRU", dict(units=4, return_sequences=True), False, True),
    "lstm-masked-backwards": ("LSTM", dict(units=3, go_backwards=True), False, True),
    "bigru-masked-mul": ("GRU", dict(units=3, return_sequences=True), "mul", True),
}
B, T, I = 3, 6, 4


def run_case(name: str, spec, keras) -> dict:
    cls, kwargs, merge, masked = spec
    rng = np.random.default_rng(sum(map(ord, name)))  # fixed per case, whatever the order
    layer = getattr(keras.layers, cls)(**kwargs)
    if merge:
        layer = keras.layers.Bidirectional(layer, merge_mode=merge)
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = None
    if masked:
        lengths = np.array([T, 2, 4])
        mask = np.arange(T)[None, :] < lengths[:, None]
    layer(x) if mask is None else layer(x, mask=mask)  # builds the weights
    weights = [(rng.standard_normal(w.shape) * 0.6).astype("float32") for w in layer.get_weights()]
    layer.set_weights(weights)
    out = layer(x) if mask is None else layer(x, mask=mask)
    outs = out if isinstance(out, (list, tuple)) else [out]
    config = {"class_name": type(layer).__name__, "config": layer.get_config()}
    arrays = {"x": x, **{f"weight_{i}": w for i, w in enumerate(weights)},
              **{f"output_{i}": np.asarray(o) for i, o in enumerate(outs)}}
    if mask is not None:
        arrays["mask"] = mask
    meta = {"config": config, "keras_version": keras.__version__, "outputs": len(outs),
            "weights": len(weights), "case": name}
    return {"meta": np.array(json.dumps(meta)), **arrays}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tf_keras as keras
    except ImportError as e:
        print(f"error: tf_keras is needed ({e}); pip install tensorflow-cpu tf_keras",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in CASES.items():
        arrays = run_case(name, spec, keras)
        np.savez_compressed(args.out / f"{name}.npz", **arrays)
        print(f"wrote {args.out / name}.npz (tf_keras {keras.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
