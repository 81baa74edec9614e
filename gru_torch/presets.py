"""One preset per notebook model: the model, its data settings and how it was trained.

Each model has exactly the Keras model's parameter count (`keras_params`) and starts from
Keras's default initializers (`init="keras"`); `reported` is the test accuracy the notebook
reported, where it did. Each computes what its notebook's Keras ran, read from Keras's
source (docs/keras-semantics.md has the versions and lines):

- A, B, D: standalone Keras 2 (GRU reset_after=False, the parameter counts say so) before
  2.3, whose GRU and LSTM gates were `hard_sigmoid`, Keras 2's clip(0.2x + 0.5, 0, 1).
  A's dropout ran in GRUCell's default implementation 1 there: one input mask and one
  recurrent mask per gate, drawn once per batch, the update's z * h_prev unmasked.
- C: tf.keras 2: sigmoid gates, reset_after=True, no dropout.
- E: tf.keras 2 (TensorFlow 2.1 or later): `recurrent_dropout > 0` switches GRUCell and
  LSTMCell to implementation 1, so both `dropout` and `recurrent_dropout` draw one mask
  per gate, and the GRU applies its recurrent masks as the LSTMs do.
"""
from __future__ import annotations

from dataclasses import dataclass

from .models import ModelConfig, SentimentClassifier


@dataclass(frozen=True)
class Preset:
    name: str
    notebook: str
    model: ModelConfig
    num_words: int
    maxlen: int
    padding: str = "pre"
    optimizer: str = "adam"
    batch_size: int = 32
    epochs: int = 5
    validation_split: float = 0.2
    early_stopping: dict | None = None   # Keras EarlyStopping arguments
    keras_params: int = 0
    reported: float | None = None
    note: str = ""


def _c(name, cell, H, params, reported):
    return Preset(name, "C", ModelConfig(vocab_size=10000, embed_dim=128, cell=cell, hidden=[H],
                                         init="keras"),
                  num_words=10000, maxlen=200, keras_params=params, reported=reported)


# Keras 2 before 2.3 (notebooks A, B, D): hard sigmoid gates (Keras 2's)
_KERAS_22 = dict(reset_after=False, recurrent_activation="hard_sigmoid_keras2")
_PER_GATE_NOTE = "dropout and recurrent_dropout with one mask per gate (Keras's implementation 1)"


def _e(name, cell, bidirectional, params, reported):
    return Preset(name, "E", ModelConfig(vocab_size=10000, embed_dim=100, cell=cell,
                                         hidden=[32, 32], bidirectional=bidirectional,
                                         dropout=0.5, recurrent_dropout=0.2,
                                         dropout_masks="per_gate", head_dropout=0.5, init="keras"),
                  num_words=10000, maxlen=500, optimizer="rmsprop", batch_size=512, epochs=5,
                  keras_params=params, reported=reported, note=_PER_GATE_NOTE)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("gru100-recdrop", "A",
           ModelConfig(vocab_size=1000, embed_dim=50, embed_dropout=0.2, hidden=[100],
                       dropout=0.2, recurrent_dropout=0.2, dropout_masks="per_gate", head=[250],
                       head_dropout=0.2, init="keras", **_KERAS_22),
           num_words=1000, maxlen=200, batch_size=512, epochs=100,
           early_stopping={"monitor": "val_accuracy", "patience": 3}, keras_params=120801,
           note="Keras 2.2: hard_sigmoid gates; " + _PER_GATE_NOTE),
    Preset("gru50-rawids", "B",
           ModelConfig(vocab_size=30000, input_mode="raw", hidden=[50, 1], logit=False,
                       init="keras", **_KERAS_22),
           num_words=30000, maxlen=300, padding="post", batch_size=100, epochs=10,
           validation_split=0.0, keras_params=7956,
           note="raw word ids as one float feature, and a tanh state read as a probability; "
                "Keras 2.2: hard_sigmoid gates"),
    _c("rnn128", "rnn", 128, 1313025, 0.7497),
    _c("lstm128", "lstm", 128, 1411713, 0.8518),
    _c("gru128", "gru", 128, 1379201, 0.8608),
    Preset("gru32-onehot", "D",
           ModelConfig(vocab_size=10000, input_mode="onehot", hidden=[32], init="keras",
                       **_KERAS_22),
           num_words=10000, maxlen=500, batch_size=32, epochs=5, validation_split=0.0,
           keras_params=963201, note="Keras 2 before 2.3: hard_sigmoid gates"),
    _e("lstm32x2", "lstm", False, 1025377, 0.8558),
    _e("gru32x2", "gru", False, 1019233, 0.8410),
    _e("bilstm32x2", "lstm", True, 1058945, 0.8671),
]}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build(name: str) -> SentimentClassifier:
    """The preset's model, freshly initialized."""
    return SentimentClassifier(get(name).model)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
