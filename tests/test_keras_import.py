"""gru_torch.from_keras against real Keras layers: Keras 3 live (its torch backend), tf_keras
(Keras 2) through golden files made by scripts/make_keras_golden.py, and live where
tf_keras is installed; the dropout semantics of each Keras version; what is refused."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import gru_torch  # noqa: E402
from gru_torch import keras_import  # noqa: E402
from gru_torch.keras_import import Dropout, KerasConfigError, KerasVersion  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "keras2"
ATOL = 1e-5  # float32 rounding of O(1) outputs, summed in another order


def flat(y) -> list:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def assert_outputs(ours, theirs, what):
    ours, theirs = flat(ours), flat(theirs)
    assert len(ours) == len(theirs), f"{what}: {len(ours)} outputs, Keras gave {len(theirs)}"
    for i, (o, t) in enumerate(zip(ours, theirs)):
        t = np.asarray(t)
        assert tuple(o.shape) == t.shape, f"{what}[{i}]: shape {tuple(o.shape)} != {t.shape}"
        np.testing.assert_allclose(o.detach().numpy(), t, atol=ATOL, rtol=0, err_msg=f"{what}[{i}]")


# ---------------------------------------------------------------- tf_keras (Keras 2)
def golden_files():
    return sorted(GOLDEN.glob("*.npz"))


def run_golden(path: Path, **overrides):
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    weights = [data[f"weight_{i}"] for i in range(meta["weights"])]
    module = gru_torch.from_keras(meta["config"], weights,
                                  keras_version=overrides.get("keras_version", meta["keras_version"]))
    mask = torch.from_numpy(data["mask"]) if "mask" in data else None
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(data["x"]), mask=mask)
    return out, [data[f"output_{i}"] for i in range(meta["outputs"])], meta


def test_golden_files_are_there():
    names = {p.stem for p in golden_files()}
    assert len(names) >= 12, f"tests/golden/keras2 holds {sorted(names)}; run scripts/make_keras_golden.py"


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_matches_tf_keras_golden(path):
    out, expected, meta = run_golden(path)
    assert meta["keras_version"].startswith("2.")
    assert_outputs(out, expected, path.stem)


def test_hard_sigmoid_golden_is_keras2s_function():
    """The same Keras 2 config read as Keras 3's would compute another function."""
    path = GOLDEN / "gru-keras22-cell.npz"
    out, expected, _ = run_golden(path, keras_version="3.15.1")
    assert np.abs(out.numpy() - expected[0]).max() > 1e-3


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None, reason="tf_keras is not installed")
@pytest.mark.parametrize("name", ["gru-keras22-cell", "bilstm-ave", "bigru-masked-mul"])
def test_matches_tf_keras_live(name):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import make_keras_golden
    import tf_keras

    arrays = make_keras_golden.run_case(name, make_keras_golden.CASES[name], tf_keras)
    meta = json.loads(str(arrays["meta"]))
    weights = [arrays[f"weight_{i}"] for i in range(meta["weights"])]
    module = gru_torch.from_keras(meta["config"], weights, keras_version=meta["keras_version"])
    mask = torch.from_numpy(arrays["mask"]) if "mask" in arrays else None
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(arrays["x"]), mask=mask)
    assert_outputs(out, [arrays[f"output_{i}"] for i in range(meta["outputs"])], name)


# ---------------------------------------------------------------- Keras 3
keras = pytest.importorskip("keras") if importlib.util.find_spec("keras") else None
needs_keras3 = pytest.mark.skipif(keras is None or not keras.__version__.startswith("3"),
                                  reason="Keras 3 is not installed")


def keras3_cases():
    if keras is None:
        return []
    L = keras.layers
    return [
        ("gru", lambda: L.GRU(5)),
        ("gru-before-sequences", lambda: L.GRU(5, reset_after=False, return_sequences=True)),
        ("gru-hard-sigmoid", lambda: L.GRU(4, recurrent_activation="hard_sigmoid")),
        ("gru-backwards-state", lambda: L.GRU(4, go_backwards=True, return_state=True)),
        ("lstm-state", lambda: L.LSTM(5, return_state=True)),
        ("lstm-no-bias-backwards", lambda: L.LSTM(4, use_bias=False, go_backwards=True,
                                                  return_sequences=True)),
        ("lstm-hard-sigmoid", lambda: L.LSTM(3, recurrent_activation="hard_sigmoid")),
        ("rnn-relu-backwards", lambda: L.SimpleRNN(5, activation="relu", go_backwards=True,
                                                   return_sequences=True)),
        ("rnn-no-bias", lambda: L.SimpleRNN(3, use_bias=False)),
        ("bilstm-sum-sequences", lambda: L.Bidirectional(L.LSTM(3, return_sequences=True),
                                                         merge_mode="sum")),
        ("bigru-state", lambda: L.Bidirectional(L.GRU(3, return_state=True))),
        ("bilstm-none-state", lambda: L.Bidirectional(L.LSTM(3, return_sequences=True,
                                                             return_state=True), merge_mode=None)),
        ("birnn-ave", lambda: L.Bidirectional(L.SimpleRNN(4), merge_mode="ave")),
        ("bigru-mul-before", lambda: L.Bidirectional(L.GRU(3, reset_after=False), merge_mode="mul")),
    ]


def _random_weights(layer, seed):
    rng = np.random.default_rng(seed)
    layer.set_weights([(rng.standard_normal(w.shape) * 0.6).astype("float32")
                       for w in layer.get_weights()])


@needs_keras3
@pytest.mark.parametrize("name,make", keras3_cases(), ids=[c[0] for c in keras3_cases()])
def test_matches_keras3_layer(name, make):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 4)).astype("float32")
    layer = make()
    layer(x)
    _random_weights(layer, 2)
    expected = [keras.ops.convert_to_numpy(o) for o in flat(layer(x))]
    module = gru_torch.from_keras(layer).eval()
    with torch.no_grad():
        assert_outputs(module(torch.from_numpy(x)), expected, name)
    # and from its serialized config, as a saved model holds it
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    again = gru_torch.from_keras(config, layer.get_weights(), keras_version=keras.__version__)
    with torch.no_grad():
        assert_outputs(again.eval()(torch.from_numpy(x)), expected, name + " (from config)")


@needs_keras3
@pytest.mark.parametrize("make", [
    lambda L: L.GRU(4, return_sequences=True), lambda L: L.LSTM(3, go_backwards=True,
                                                                return_sequences=True),
    lambda L: L.Bidirectional(L.GRU(3, return_sequences=True)), lambda L: L.SimpleRNN(4),
    lambda L: L.GRU(3, go_backwards=True), lambda L: L.LSTM(3, return_state=True)])
def test_embedding_mask_zero_matches_keras3(make):
    emb = keras.layers.Embedding(20, 4, mask_zero=True)
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0]])
    e, mask = emb(ids), emb.compute_mask(ids)
    layer = make(keras.layers)
    layer(e, mask=mask)
    _random_weights(layer, 3)
    expected = [keras.ops.convert_to_numpy(o) for o in flat(layer(e, mask=mask))]
    module = gru_torch.from_keras(layer).eval()
    with torch.no_grad():
        out = module(torch.as_tensor(keras.ops.convert_to_numpy(e)),
                     mask=torch.as_tensor(keras.ops.convert_to_numpy(mask)))
    assert_outputs(out, expected, "masked")


@needs_keras3
def test_initial_state_matches_keras3():
    layer = keras.layers.LSTM(3, return_state=True)
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype("float32")
    h0, c0 = (np.random.default_rng(s).standard_normal((2, 3)).astype("float32") for s in (1, 2))
    expected = [keras.ops.convert_to_numpy(o) for o in layer(x, initial_state=[h0, c0])]
    module = gru_torch.from_keras(layer).eval()
    with torch.no_grad():
        out = module(torch.from_numpy(x), initial_state=[torch.from_numpy(h0), torch.from_numpy(c0)])
    assert_outputs(out, expected, "initial_state")


# ---------------------------------------------------------------- dropout semantics
def version(text):
    return KerasVersion.parse(text)


@pytest.mark.parametrize("kind,config,ver,want", [
    # Keras 2.2 (standalone): implementation 1 by default, one mask per gate
    ("gru", {"dropout": .2, "recurrent_dropout": .2}, "2.2.4", Dropout("per_gate", .2, .2)),
    ("lstm", {"dropout": .2, "recurrent_dropout": .3, "implementation": 2}, "2.2.4",
     Dropout("shared", .2, .3)),
    # tf.keras from TF 2.1 on: recurrent_dropout switches to implementation 1
    ("gru", {"dropout": .5, "recurrent_dropout": .2, "implementation": 1}, "2.4.0",
     Dropout("per_gate", .5, .2)),
    ("lstm", {"dropout": .5, "recurrent_dropout": .2}, "2.15.0", Dropout("per_gate", .5, .2)),
    # tf.keras's fused GRU/LSTM: dropout element by element
    ("lstm", {"dropout": .3, "activation": "tanh", "recurrent_activation": "sigmoid",
              "use_bias": True}, "2.15.0", Dropout("per_step", .3, 0.0)),
    # Keras 3.8 and later: recurrent dropout means implementation 1
    ("gru", {"dropout": .1, "recurrent_dropout": .2}, "3.15.1", Dropout("per_gate", .1, .2)),
    ("lstm", {"dropout": .1}, "3.15.1", Dropout("shared", .1, 0.0)),
    # Keras 3.0/3.1 drew the recurrent mask at `dropout`'s rate
    ("lstm", {"dropout": .1, "recurrent_dropout": .4}, "3.1.0", Dropout("shared", .1, .1)),
    ("rnn", {"dropout": .1, "recurrent_dropout": .4}, "3.15.1", Dropout("shared", .1, .4)),
    ("rnn", {"dropout": .1, "recurrent_dropout": .4}, "3.1.0", Dropout("shared", .1, .1)),
    ("rnn", {"dropout": .1}, "3.1.0", Dropout("shared", .1, 0.0)),  # no recurrent mask drawn
    ("gru", {}, None, Dropout()),
])
def test_dropout_semantics_by_version(kind, config, ver, want):
    got = keras_import.dropout_semantics(kind, config, None if ver is None else version(ver))
    assert got == want


@pytest.mark.parametrize("config,ver,match", [
    ({"dropout": .2, "recurrent_dropout": .2}, None, "keras_version"),
    ({"recurrent_dropout": .2}, "3.7.0", "update z \\* h_prev"),
    ({"recurrent_dropout": .2, "implementation": 2}, "2.3.1", "update z \\* h_prev"),
])
def test_dropout_that_cannot_be_honoured_is_refused(config, ver, match):
    with pytest.raises(KerasConfigError, match=match):
        keras_import.dropout_semantics("gru", config, None if ver is None else version(ver))


def test_a_converted_layer_drops_with_its_masks():
    config = {"class_name": "GRU", "config": {"units": 3, "dropout": 0.2,
                                              "recurrent_dropout": 0.2, "implementation": 1,
                                              "batch_input_shape": [None, None, 4]}}
    module = gru_torch.from_keras(config, keras_version="2.2.4")
    rnn = module.rnn
    assert (rnn.dropout_masks, rnn.input_dropout, rnn.recurrent_dropout) == ("per_gate", .2, .2)
    assert rnn.recurrent_activation == "sigmoid" and rnn.reset_after is False  # Keras 2.2's default
    step = gru_torch.from_keras({"class_name": "LSTM", "config": {
        "units": 3, "dropout": 0.3, "activation": "tanh", "recurrent_activation": "sigmoid",
        "batch_input_shape": [None, None, 4]}}, keras_version="2.15.0")
    assert step.step_dropout == 0.3 and step.rnn.input_dropout == 0.0
    x = torch.ones(2, 5, 4)
    out_a, out_b = step.train()(x), step(x)
    assert not torch.equal(out_a, out_b)  # a fresh mask per call in training
    assert torch.equal(step.eval()(x), step(x))


# ---------------------------------------------------------------- refusals
def base_config(**extra):
    return {"class_name": "GRU", "config": {"units": 3, "batch_input_shape": [None, None, 2],
                                            **extra}}


@pytest.mark.parametrize("config,ver,match", [
    (base_config(stateful=True), "3.15.1", "stateful=True"),
    (base_config(activation="relu"), "3.15.1", "activation='relu'"),
    (base_config(recurrent_activation="hard_sigmoid"), None, "pass keras_version"),
    (base_config(recurrent_activation="softsign"), "3.15.1", "recurrent_activation='softsign'"),
    (base_config(kernel_constraint={"class_name": "MaxNorm", "config": {}}), "3.15.1",
     "kernel_constraint='MaxNorm'"),
    (base_config(time_major=True), "2.15.0", "time_major=True"),
    (base_config(mystery=1), "3.15.1", "mystery=1"),
    ({"class_name": "Conv1D", "config": {}}, "3.15.1", "class_name='Conv1D'"),
    ({"config": {}}, "3.15.1", "'class_name' and 'config'"),
    ({"class_name": "Bidirectional", "config": {"merge_mode": "max", "layer": base_config()}},
     "3.15.1", "merge_mode='max'"),
    (base_config(units=0), "3.15.1", "units=0"),
])
def test_configs_that_cannot_be_honoured_raise_naming_the_key(config, ver, match):
    with pytest.raises(KerasConfigError, match=match):
        gru_torch.from_keras(config, keras_version=ver)


def test_bad_versions_and_arguments():
    with pytest.raises(KerasConfigError, match="keras_version"):
        gru_torch.from_keras(base_config(), keras_version="latest")
    with pytest.raises(KerasConfigError, match="Keras 1.2"):
        gru_torch.from_keras(base_config(), keras_version="1.2")
    with pytest.raises(TypeError, match="Keras layer or its serialized config"):
        gru_torch.from_keras(torch.nn.GRU(2, 3))
    with pytest.raises(KerasConfigError, match="weights: a layer with a bias has 3 arrays"):
        gru_torch.from_keras(base_config(), [np.zeros((2, 9)), np.zeros((3, 9))],
                             keras_version="3.15.1")
    with pytest.warns(UserWarning, match="kernel_regularizer"):
        gru_torch.from_keras(base_config(kernel_regularizer={"class_name": "L2"}),
                             keras_version="3.15.1")


def test_masks_gru_torch_cannot_run_are_refused():
    module = gru_torch.from_keras(base_config(return_sequences=True), keras_version="3.15.1")
    x = torch.randn(2, 4, 2)
    with pytest.raises(ValueError, match="prefix of each row"):
        module(x, mask=torch.tensor([[True, False, True, True], [True] * 4]))
    with pytest.raises(ValueError, match="at least one step"):
        module(x, mask=torch.tensor([[False] * 4, [True] * 4]))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        module(x, mask=torch.ones(2, 3, dtype=torch.bool))


def _bigru_config(**extra):
    inner = {"class_name": "GRU", "config": {"units": 3, "return_sequences": True,
                                             "reset_after": False, **extra}}
    return {"class_name": "Bidirectional", "config": {"layer": inner, "merge_mode": "concat"}}


def test_bidirectional_masked_steps_follow_the_keras_version():
    """tf.keras and Keras 3 zero a Bidirectional's outputs at masked steps; standalone
    Keras 2 repeats the forward layer's last output there (the backward layer's stay 0)."""
    torch.manual_seed(0)
    weights = [np.random.RandomState(i).randn(*s).astype(np.float32) * 0.5
               for i, s in enumerate([(2, 9), (3, 9), (9,)] * 2)]
    x = torch.randn(2, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    from_keras = gru_torch.from_keras
    tf_keras_like = from_keras(_bigru_config(), weights, keras_version="2.15.0")(x, mask)
    keras22 = from_keras(_bigru_config(), weights, keras_version="2.2.4")(x, mask)
    torch.testing.assert_close(keras22[0], tf_keras_like[0])       # unmasked row: the same
    torch.testing.assert_close(keras22[1, :2], tf_keras_like[1, :2])
    assert torch.all(tf_keras_like[1, 2:] == 0)
    assert torch.all(keras22[1, 2:, 3:] == 0)                      # backward half: zeros
    torch.testing.assert_close(keras22[1, 2:, :3], keras22[1, 1, :3].expand(3, 3))
    with pytest.raises(KerasConfigError, match="keras_version"):
        from_keras(_bigru_config(), weights)(x, mask)
    from_keras(_bigru_config(), weights)(x)                        # no mask: no ambiguity
