"""One preset per notebook model: the model, its data settings and how it was trained.

Each model has exactly the Keras model's parameter count (`keras_params`) and starts from
Keras's default initializers (`init="keras"`); `reported` is the test accuracy the notebook
reported, where it did.
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


# tf.keras's GRUCell (implementation 2, its default) draws a recurrent-dropout mask and never
# applies it, so notebook E's GRU trained without recurrent dropout; its LSTMs applied theirs.
_TF_KERAS_GRU_NOTE = "recurrent_dropout=0.2 as written, but tf.keras's GRU never applied it"


def _e(name, cell, bidirectional, params, reported):
    gru = cell == "gru"
    return Preset(name, "E", ModelConfig(vocab_size=10000, embed_dim=100, cell=cell,
                                         hidden=[32, 32], bidirectional=bidirectional,
                                         dropout=0.5, recurrent_dropout=0.0 if gru else 0.2,
                                         head_dropout=0.5, init="keras"),
                  num_words=10000, maxlen=500, optimizer="rmsprop", batch_size=512, epochs=5,
                  keras_params=params, reported=reported, note=_TF_KERAS_GRU_NOTE if gru else "")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("gru100-recdrop", "A",
           ModelConfig(vocab_size=1000, embed_dim=50, embed_dropout=0.2, hidden=[100],
                       dropout=0.2, recurrent_dropout=0.2, reset_after=False, head=[250],
                       head_dropout=0.2, init="keras"),
           num_words=1000, maxlen=200, batch_size=512, epochs=100,
           early_stopping={"monitor": "val_accuracy", "patience": 3}, keras_params=120801),
    Preset("gru50-rawids", "B",
           ModelConfig(vocab_size=30000, input_mode="raw", hidden=[50, 1], reset_after=False,
                       logit=False, init="keras"),
           num_words=30000, maxlen=300, padding="post", batch_size=100, epochs=10,
           validation_split=0.0, keras_params=7956,
           note="raw word ids as one float feature, and a tanh state read as a probability"),
    _c("rnn128", "rnn", 128, 1313025, 0.7497),
    _c("lstm128", "lstm", 128, 1411713, 0.8518),
    _c("gru128", "gru", 128, 1379201, 0.8608),
    Preset("gru32-onehot", "D",
           ModelConfig(vocab_size=10000, input_mode="onehot", hidden=[32], reset_after=False,
                       init="keras"),
           num_words=10000, maxlen=500, batch_size=32, epochs=5, validation_split=0.0,
           keras_params=963201),
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
