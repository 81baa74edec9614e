"""scripts/keras_notebook_c.py, short, on the sample reviews: notebook C's three Keras models
with gru_torch.keras's layers through model.fit, evaluate and predict, with the notebook's
parameter counts."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """scripts/<name>.py as a module, where Keras runs on torch (else the test skips)."""
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs another backend than torch")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
def test_notebook_c_runs_on_the_sample(tmp_path, monkeypatch):
    keras_notebook_c = _script("keras_notebook_c")
    import gru_torch.keras as gk
    from gru_torch import ops

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].kind)
        return ops.rnn_layer(*args, **kwargs)

    monkeypatch.setitem(gk.LAYER_FNS, "fused", counting)
    out = tmp_path / "c.json"
    rc = keras_notebook_c.main(["--data", "sample", "--epochs", "1", "--limit-train", "40",
                                "--limit-test", "16", "--results", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results["layers"] == "gru_torch" and results["test"] == 16
    for name, (layer, params, _) in keras_notebook_c.NOTEBOOK.items():
        r = results["models"][name]
        assert r["params"] == params == r["notebook_params"], name
        assert 0.0 <= r["test_accuracy"] <= 1.0 and len(r["epoch_seconds"]) == 1
    assert set(calls) == {"rnn", "lstm", "gru"}  # fit, evaluate and predict ran fused


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
def test_speed_script_builds_the_notebook_models():
    """scripts/keras_speed.py's models: the notebooks' parameter counts with either layers,
    and its table from results."""
    import keras

    keras_speed = _script("keras_speed")
    import gru_torch.keras as gk

    for name, params in (("gru128", 1379201), ("bilstm32x2", 1058945)):
        for layers in (gk, keras.layers):
            assert keras_speed.build(name, layers).count_params() == params, name
    fake = {"gru128": {"torch/keras": {"epoch_s": 500.0}, "torch/gru_torch": {"epoch_s": 25.0}}}
    meta = {"cpu": "CPU", "threads": 2, "keras": "3", "torch": "2", "load_before": 1.0,
            "load_after": 2.0, "rounds": 3, "batches": 3, "tensorflow": "", "models": ["gru128"]}
    assert "| gru128 | 32 x 200 | 625 | 500.0 | 25.0 | 20.0x | - |" in keras_speed.table(fake, meta)
