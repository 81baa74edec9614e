"""gru_torch.keras's GRU, LSTM and SimpleRNN against keras.layers' on the same weights
(Keras 3 on its torch backend): outputs and gradients (input and every weight) in eval
and in training, return_sequences / return_state / go_backwards, masks, Bidirectional,
dropout with the same masks, weights and .keras files, fallbacks and errors."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                reason="Keras is not installed")
if importlib.util.find_spec("keras") is not None:
    import keras

    import gru_torch.keras as gk
    from gru_torch import extension_status as gru_torch_status
    from gru_torch import ops

    if keras.backend.backend() != "torch":
        pytestmark = pytest.mark.skip(reason="Keras runs another backend than torch")

ATOL = 2e-6  # float32 rounding of O(1) values summed in another order
B, T, I, H = 3, 6, 5, 4


@pytest.fixture(autouse=True)
def fused_calls(monkeypatch):
    """Counts the fused op's calls and turns gru_torch's warnings into errors: a test
    that expects the fused path fails if the layer quietly took another."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return ops.rnn_layer(*args, **kwargs)

    monkeypatch.setitem(gk.LAYER_FNS, "fused", counting)
    gk._warned.clear()  # each test sees the warnings it causes
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="gru_torch")
        yield calls


def pair(name: str, input_shape=(None, T, I), seed=0, **kwargs):
    """(ours, Keras's) built with the same (random, non-zero bias) weights."""
    ours = getattr(gk, name)(H, **kwargs)
    theirs = getattr(keras.layers, name)(H, **kwargs)
    ours.build(input_shape)
    theirs.build(input_shape)
    rng = np.random.RandomState(seed)
    weights = [rng.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def flat(y) -> list:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def outputs_and_grads(layer, x: np.ndarray, **call_kwargs):
    """The layer's outputs, and the gradients of a fixed random projection of them with
    respect to the input and each trainable weight."""
    xt = torch.tensor(x, requires_grad=True)
    ys = flat(layer(xt, **call_kwargs))
    gen = torch.Generator().manual_seed(1)
    loss = sum((y * torch.randn(y.shape, generator=gen)).sum() for y in ys)
    params = [w.value for w in layer.trainable_weights]
    grads = torch.autograd.grad(loss, [xt] + params)
    return [y.detach().numpy() for y in ys], [g.numpy() for g in grads]


def assert_same(ours, theirs, x, atol=ATOL, **call_kwargs):
    ya, ga = outputs_and_grads(ours, x, **call_kwargs)
    yb, gb = outputs_and_grads(theirs, x, **call_kwargs)
    assert len(ya) == len(yb)
    for i, (a, b) in enumerate(zip(ya, yb)):
        assert a.shape == b.shape, f"output {i}: {a.shape} != {b.shape}"
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"output {i}")
    for i, (a, b) in enumerate(zip(ga, gb)):
        np.testing.assert_allclose(a, b, atol=5 * atol, rtol=1e-5, err_msg=f"gradient {i}")


def inputs(seed=2, shape=(B, T, I)):
    return np.random.RandomState(seed).randn(*shape).astype("float32")


CASES = [
    ("GRU", {}),
    ("GRU", dict(reset_after=False, return_sequences=True)),
    ("GRU", dict(recurrent_activation="hard_sigmoid", go_backwards=True, return_state=True)),
    ("GRU", dict(use_bias=False, return_sequences=True, return_state=True, go_backwards=True)),
    ("LSTM", dict(return_state=True)),
    ("LSTM", dict(recurrent_activation="hard_sigmoid", return_sequences=True, go_backwards=True)),
    ("LSTM", dict(use_bias=False, unit_forget_bias=False, return_sequences=True)),
    ("SimpleRNN", dict(return_sequences=True, return_state=True)),
    ("SimpleRNN", dict(activation="relu", go_backwards=True, unroll=True)),
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{'-'.join(k) or 'default'}"
                                                     for n, k in CASES])
def test_matches_keras(name, kwargs, training, fused_calls):
    ours, theirs = pair(name, **kwargs)
    assert_same(ours, theirs, inputs(), training=training)
    assert fused_calls, "the fused op did not run"


def test_initial_state_and_its_gradient(fused_calls):
    for name in ("GRU", "LSTM"):
        ours, theirs = pair(name, return_state=True)
        states = [torch.tensor(inputs(3 + k, (B, H)), requires_grad=True)
                  for k in range(2 if name == "LSTM" else 1)]
        x = torch.tensor(inputs())
        ya = flat(ours(x, initial_state=states))
        ga = torch.autograd.grad(sum(y.sum() for y in ya), states)
        yb = flat(theirs(x, initial_state=states))
        gb = torch.autograd.grad(sum(y.sum() for y in yb), states)
        for a, b in zip(ya + list(ga), yb + list(gb)):
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=ATOL)
    assert len(fused_calls) == 2


def masks():
    """Post-padded rows, pre-padded rows, a full row and an empty row."""
    m = np.ones((4, T), dtype=bool)
    m[0, 4:] = False          # post-padding
    m[1, :2] = False          # pre-padding
    m[3, :] = False           # no step at all
    return m


@pytest.mark.parametrize("name", ["GRU", "LSTM", "SimpleRNN"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("zero_output", [False, True], ids=["carry", "zeros"])
def test_masks_match_keras(name, go_backwards, zero_output, fused_calls):
    for sequences in (False, True):
        ours, theirs = pair(name, return_sequences=sequences, return_state=True,
                            go_backwards=go_backwards, zero_output_for_mask=zero_output)
        assert_same(ours, theirs, inputs(shape=(4, T, I)), mask=torch.tensor(masks()))
    assert len(fused_calls) == 2


def test_mask_from_embedding_in_a_model(fused_calls):
    """Embedding(mask_zero=True) -> the layer's mask, post- and pre-padded ids."""
    ids = np.array([[3, 1, 4, 0, 0, 0], [0, 0, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7]])
    models = []
    for layers in (gk, keras.layers):
        keras.utils.set_random_seed(4)
        models.append(keras.Sequential([keras.Input((T,), dtype="int32"),
                                        keras.layers.Embedding(10, I, mask_zero=True),
                                        layers.GRU(H, return_sequences=True),
                                        layers.LSTM(H), keras.layers.Dense(1)]))
    models[1].set_weights(models[0].get_weights())
    a, b = (m.predict(ids, verbose=0) for m in models)
    np.testing.assert_allclose(a, b, atol=ATOL)
    assert len(fused_calls) == 2


def test_mask_of_several_runs_falls_back_with_a_warning(fused_calls):
    ours, theirs = pair("GRU", return_sequences=True)
    mask = np.ones((B, T), dtype=bool)
    mask[0, 2] = False  # a hole in the middle
    x = inputs()
    with pytest.warns(UserWarning, match="not one run"):
        ya = ours(x, mask=mask)
    np.testing.assert_allclose(ya.detach().numpy(), theirs(x, mask=mask).detach().numpy(),
                               atol=ATOL)
    assert not fused_calls


@pytest.mark.parametrize("merge_mode", ["concat", "ave", None])
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_bidirectional(name, merge_mode, fused_calls):
    mask = torch.tensor(masks())
    x = inputs(shape=(4, T, I))
    kw = dict(return_sequences=True, return_state=True)
    wrapped = [keras.layers.Bidirectional(getattr(layers, name)(H, **kw), merge_mode=merge_mode)
               for layers in (gk, keras.layers)]
    for w in wrapped:
        w.build((None, T, I))
    assert type(wrapped[0].backward_layer) is getattr(gk, name)
    assert wrapped[0].backward_layer.go_backwards
    rng = np.random.RandomState(5)
    weights = [rng.uniform(-0.6, 0.6, w.shape).astype("float32") for w in wrapped[0].get_weights()]
    for w in wrapped:
        w.set_weights(weights)
    assert_same(*wrapped, x, mask=mask)
    assert len(fused_calls) == 2


def fixed_masks(layer, seed: int):
    """Makes the layer's cell draw the same masks as any other layer given the same seed
    (Keras's own draws come from each layer's seed generator)."""
    rng = np.random.RandomState(seed)

    def create(step_input, rate):
        count = getattr(layer.cell, "dropout_mask_count", None)
        shape = tuple(step_input.shape)

        def one():
            keep = (rng.uniform(size=shape) >= rate).astype("float32") / (1 - rate)
            return torch.tensor(keep)
        return one() if count is None else [one() for _ in range(count)]

    layer.cell._create_dropout_mask = create


DROPOUT = [
    ("GRU", dict(dropout=0.3, recurrent_dropout=0.4, return_sequences=True)),  # per gate
    ("GRU", dict(dropout=0.3, reset_after=False)),                            # one mask
    ("LSTM", dict(dropout=0.3, recurrent_dropout=0.4, return_state=True)),
    ("LSTM", dict(dropout=0.5, go_backwards=True)),
    ("SimpleRNN", dict(dropout=0.3, recurrent_dropout=0.4, return_sequences=True)),
]


@pytest.mark.parametrize("name,kwargs", DROPOUT, ids=[f"{n}-{k.get('recurrent_dropout', 0)}"
                                                      for n, k in DROPOUT])
def test_dropout_with_keras_masks(name, kwargs, fused_calls):
    """Training with dropout: Keras's masks (per gate where its cell's implementation is
    1), drawn once per call, applied where its cell applies them."""
    ours, theirs = pair(name, **kwargs)
    fixed_masks(ours, 7)
    fixed_masks(theirs, 7)
    assert_same(ours, theirs, inputs(), training=True)
    # in eval the masks are drawn but not applied
    ya = ours(inputs(), training=False)
    yb = keras.layers.__dict__[name].from_config(theirs.get_config())
    yb.build((None, T, I))
    yb.set_weights(theirs.get_weights())
    np.testing.assert_allclose(flat(ya)[0].detach().numpy(),
                               flat(yb(inputs(), training=False))[0].detach().numpy(), atol=ATOL)


def test_stateful_matches_keras(fused_calls):
    ours, theirs = pair("GRU", input_shape=(B, T, I), stateful=True)
    for k in range(2):
        a = ours(inputs(10 + k)).detach().numpy()
        b = theirs(inputs(10 + k)).detach().numpy()
        np.testing.assert_allclose(a, b, atol=ATOL, err_msg=f"call {k}")


def test_fit_takes_the_same_steps(fused_calls):
    """model.fit with SGD on both: the same weights after two steps."""
    ids = np.random.RandomState(6).randint(1, 10, size=(8, T))
    y = np.random.RandomState(7).randint(0, 2, size=(8, 1)).astype("float32")
    models = []
    for layers in (gk, keras.layers):
        keras.utils.set_random_seed(8)
        m = keras.Sequential([keras.Input((T,), dtype="int32"), keras.layers.Embedding(10, I),
                              layers.SimpleRNN(H, return_sequences=True), layers.GRU(H),
                              keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
        models.append(m)
    models[1].set_weights(models[0].get_weights())
    for m in models:
        m.fit(ids, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert fused_calls


def test_weights_and_keras_files_interchange(tmp_path, fused_calls):
    def model(layers):
        return keras.Sequential([keras.Input((T, I)), layers.LSTM(H, return_sequences=True),
                                 keras.layers.Bidirectional(layers.GRU(H)), keras.layers.Dense(2)])
    ours, theirs = model(gk), model(keras.layers)
    theirs.save_weights(tmp_path / "theirs.weights.h5")
    ours.load_weights(tmp_path / "theirs.weights.h5")
    x = inputs()
    expected = theirs.predict(x, verbose=0)
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, atol=ATOL)
    ours.save(tmp_path / "ours.keras")
    loaded = keras.saving.load_model(tmp_path / "ours.keras")
    assert [type(layer) for layer in loaded.layers[:1]] == [gk.LSTM]
    assert type(loaded.layers[1].forward_layer) is gk.GRU
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=ATOL)
    assert loaded.get_config()["layers"][1]["registered_name"] == "gru_torch>LSTM"


def test_other_activation_falls_back_with_a_warning(fused_calls):
    ours, theirs = pair("GRU", activation="relu", return_sequences=True)
    with pytest.warns(UserWarning, match="activation=.*Keras's own GRU loop"):
        assert_same(ours, theirs, inputs())
    assert not fused_calls


def test_other_backend_is_refused():
    class Fake:
        class backend:
            @staticmethod
            def backend():
                return "tensorflow"
    with pytest.raises(RuntimeError, match="torch backend only.*'tensorflow'"):
        gk._check_backend(Fake, "GRU")


def test_keras_version_is_in_the_tested_range():
    assert gk.check_version(keras.__version__) is None, gk.check_version(keras.__version__)
    assert "tested with Keras" in gk.check_version("3.99.0")
    assert "tested with Keras" in gk.check_version("2.15.0")


def test_import_needs_no_keras():
    code = ("import sys, gru_torch, gru_torch.keras as gk; "
            "assert 'keras' not in sys.modules, 'keras imported'; print(gk.LAYERS)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_gpu_policy_under_the_emulator(monkeypatch):
    """On a GPU (the CUDA kernels under gru_torch's emulator stand in for one) the layers
    take what gru_torch's modules take there: torch.nn's kernel (cuDNN) where nn can
    express the layer, else the fused CUDA kernel (the GRU), else the reference loop."""
    from gru_torch import testing

    if not gru_torch_status().loaded or not hasattr(torch.ops.gru_torch, "_emu_configure"):
        pytest.skip("the extension was built without the CUDA emulator")
    used = []
    for key, fn in list(gk.LAYER_FNS.items()):
        def counting(*args, _key=key, _fn=fn, **kwargs):
            used.append(_key)
            return _fn(*args, **kwargs)
        monkeypatch.setitem(gk.LAYER_FNS, key, counting)
    mask = torch.tensor(masks())
    with testing.emulate_cuda():
        ours, theirs = pair("GRU", return_sequences=True, return_state=True)
        assert_same(ours, theirs, inputs(shape=(4, T, I)), mask=mask)
        ours, theirs = pair("GRU", reset_after=False)
        assert_same(ours, theirs, inputs(), atol=1e-3)  # the CUDA kernel's float32 is TF32
        ours, theirs = pair("LSTM", go_backwards=True)
        assert_same(ours, theirs, inputs(shape=(4, T, I)), mask=mask)
    assert used == ["cudnn", "fused", "cudnn"]
