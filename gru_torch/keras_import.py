"""gru_torch.from_keras: a Keras recurrent layer as a PyTorch module that computes what the
layer computes.

It takes a live Keras layer (Keras 3, or Keras 2 as tf_keras / tf.keras) or its serialized
`{"class_name": ..., "config": ...}` dict, as a saved model's JSON or H5 holds it, so a
legacy model converts without Keras installed. GRU (both cells), LSTM, SimpleRNN and
Bidirectional around any of them; batch-first input; return_sequences, return_state,
go_backwards, merge_mode; use_bias, activation, recurrent_activation, dropout and
recurrent_dropout, each with the semantics of the Keras version that made the layer
(docs/keras-semantics.md). What it cannot honour raises a ValueError naming the key and
its value; it never builds a silently different model.

A serialized config does not say which Keras wrote it, and "hard_sigmoid" (and the
dropout masks) mean different things in Keras 2 and 3, so a dict needs `keras_version=`
(an H5 file's `keras_version` attribute, a .keras file's metadata.json) wherever the
answer depends on it; a live layer tells its version itself.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import initializers
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN
from .rnn_base import RNNBase

KINDS = {"GRU": "gru", "LSTM": "lstm", "SimpleRNN": "rnn"}
MERGE_MODES = ("concat", "sum", "mul", "ave", None)
_IGNORED = {"name", "trainable", "dtype", "unroll", "seed", "use_cudnn", "implementation",
            "time_major", "reset_after", "unit_forget_bias", "kernel_initializer",
            "recurrent_initializer", "bias_initializer", "stateful", "return_sequences",
            "return_state", "go_backwards", "zero_output_for_mask", "units", "activation",
            "recurrent_activation", "use_bias", "dropout", "recurrent_dropout",
            "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
            "activity_regularizer", "kernel_constraint", "recurrent_constraint",
            "bias_constraint", "batch_input_shape", "batch_shape", "input_shape", "input_dim",
            "input_length", "build_config", "registered_name", "module", "trainable_weights"}
_DEFAULT_INITIALIZERS = {"kernel_initializer": "glorotuniform",
                         "recurrent_initializer": "orthogonal", "bias_initializer": "zeros"}


class KerasConfigError(ValueError):
    """A Keras layer configuration that gru_torch cannot honour, naming the key."""


@dataclass(frozen=True)
class KerasVersion:
    major: int
    minor: int
    patch: int
    tf_keras: bool  # tf.keras / tf_keras (a "-tf" version, or Keras 2.4 and later)
    text: str

    @classmethod
    def parse(cls, text) -> "KerasVersion":
        if not isinstance(text, str):
            raise TypeError(f"keras_version must be a version string such as '2.2.4' or "
                            f"'3.15.1', got {type(text).__name__}")
        m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(.*)$", text)
        if not m:
            raise KerasConfigError(f"keras_version: cannot read {text!r} as a Keras version "
                                   "(e.g. '2.2.4', '2.4.0', '3.15.1')")
        major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
        if major not in (2, 3):
            raise KerasConfigError(f"keras_version: Keras {text} is not supported (Keras 2 and 3 are)")
        tf_keras = major == 2 and ("tf" in m[4] or (minor, patch) >= (4, 0))
        return cls(major, minor, patch, tf_keras, text.strip())

    def __lt__(self, other: tuple) -> bool:
        return (self.major, self.minor, self.patch) < other


@dataclass(frozen=True)
class Dropout:
    """How a layer's dropout runs: masks "shared", "per_gate", or (tf.keras's fused path)
    "per_step" (ordinary dropout on every input element), and the two rates."""
    masks: str = "shared"
    input_rate: float = 0.0
    recurrent_rate: float = 0.0


def dropout_semantics(kind: str, config: dict, version: KerasVersion | None) -> Dropout:
    """What `dropout` and `recurrent_dropout` do in this Keras version (Keras's source,
    as docs/keras-semantics.md cites it)."""
    d, rd = float(config.get("dropout", 0.0)), float(config.get("recurrent_dropout", 0.0))
    if d == 0 and rd == 0:
        return Dropout()
    if version is None:
        raise KerasConfigError(
            f"dropout={d}, recurrent_dropout={rd}: how Keras drew these masks depends on its "
            "version (one mask per gate or one for all; Keras 3 before 3.8 and Keras 2's "
            "implementation 2 also drop the GRU's update term); pass keras_version=")
    if kind == "rnn":  # one mask each, in every version
        if version.major == 3 and version < (3, 2, 0) and rd > 0:
            rd = d  # Keras 3.0-3.1 drew the recurrent mask with the input rate
        return Dropout("shared", d, rd)
    if version.major == 3:
        if version < (3, 2, 0):
            rd = d if rd > 0 else 0.0  # the recurrent mask drawn at `dropout`'s rate
        if version < (3, 8, 0):
            if kind == "gru" and rd > 0:
                raise KerasConfigError(
                    f"recurrent_dropout={config.get('recurrent_dropout')}: Keras {version.text}'s "
                    "GRUCell drops h_prev in the update z * h_prev too (fixed in Keras 3.8), a "
                    "cell gru_torch does not have")
            return Dropout("shared", d, rd)
        return Dropout("per_gate" if rd > 0 else "shared", d, rd)
    # Keras 2: the config records the implementation that ran (tf.keras from TF 2.1 on
    # switches a cell with recurrent dropout to 1, and its get_config says so)
    implementation = config.get("implementation")
    if version.tf_keras:
        if rd == 0 and _tf_fused_path(kind, config):
            return Dropout("per_step", d, 0.0)
        if implementation is None:
            implementation = 1 if rd > 0 and not version < (2, 3, 0) else 2
    elif implementation is None:
        implementation = 1 if version < (2, 3, 0) else 2
    if implementation == 1:
        return Dropout("per_gate", d, rd)
    if kind == "gru" and rd > 0:
        raise KerasConfigError(
            f"implementation={implementation} with recurrent_dropout={rd}: Keras "
            f"{version.text}'s GRUCell then drops h_prev in the update z * h_prev too, a cell "
            "gru_torch does not have")
    return Dropout("shared", d, rd)


def _tf_fused_path(kind: str, config: dict) -> bool:
    """Whether tf.keras 2's GRU/LSTM layer runs its fused kernel (which drops inputs
    element by element, not with one mask over time)."""
    ok = (config.get("activation") == "tanh" and config.get("recurrent_activation") == "sigmoid"
          and not config.get("unroll") and config.get("use_bias", True))
    return ok and (kind == "lstm" or config.get("reset_after", True))


def _name_of(value) -> str | None:
    """An activation's or initializer's name, from a string or a serialized object."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("class_name") or value.get("config", {}).get("name")
    return getattr(value, "__name__", type(value).__name__)


def _gate_activation(kind: str, config: dict, version: KerasVersion | None) -> str:
    if kind == "rnn":
        return "sigmoid"
    value = _name_of(config.get("recurrent_activation", "sigmoid"))
    if value == "sigmoid":
        return "sigmoid"
    if value == "hard_sigmoid":
        if version is None:
            raise KerasConfigError(
                "recurrent_activation='hard_sigmoid' names clip(0.2*x + 0.5, 0, 1) in Keras 2 "
                "and clip(x/6 + 0.5, 0, 1) in Keras 3; pass keras_version= (an H5 file's "
                "keras_version attribute) to say which")
        return f"hard_sigmoid_keras{version.major}"
    raise KerasConfigError(f"recurrent_activation={value!r}: gru_torch's gates are 'sigmoid' "
                           "or 'hard_sigmoid'")


def _check_config(kind: str, config: dict) -> None:
    if config.get("stateful"):
        raise KerasConfigError("stateful=True: a stateful layer keeps its state between "
                               "batches, which gru_torch's modules do not")
    activation = _name_of(config.get("activation", "tanh"))
    allowed = ("tanh", "relu") if kind == "rnn" else ("tanh",)
    if activation not in allowed:
        raise KerasConfigError(f"activation={activation!r}: gru_torch's "
                               f"{'SimpleRNN' if kind == 'rnn' else kind.upper()} cell has "
                               f"{' or '.join(repr(a) for a in allowed)}")
    for key in ("kernel_constraint", "recurrent_constraint", "bias_constraint"):
        if config.get(key) is not None:
            raise KerasConfigError(f"{key}={_name_of(config[key])!r}: Keras applies it to the "
                                   "weights after every update, which the module would not")
    regularized = [k for k in ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                               "activity_regularizer") if config.get(k) is not None]
    if regularized:
        warnings.warn(f"from_keras: {', '.join(regularized)} add to Keras's training loss, not "
                      "to the layer's outputs; add them to your loss to train as Keras did",
                      stacklevel=3)
    if config.get("time_major"):
        raise KerasConfigError("time_major=True: the converted module takes batch-first input "
                               "[batch, time, features]")
    unknown = sorted(set(config) - _IGNORED)
    if unknown:
        raise KerasConfigError(f"{unknown[0]}={config[unknown[0]]!r}: a key gru_torch does not "
                               "know; it cannot tell whether it changes what the layer computes")


class KerasLayer(nn.Module):
    """What a Keras recurrent layer (or Bidirectional around one) computes, on a
    gru_torch module (`.rnn`). forward(x [B, T, I], mask=None, initial_state=None) returns
    what Keras 3's layer returns: the last output [B, D*units] (or [B, T, ...] with
    return_sequences; with merge_mode=None the two directions'), and with return_state a
    tuple of it and the states (h, or h and c, per direction); `mask` ([B, T], True for
    the steps to read, as an Embedding(mask_zero=True) makes it) must hold each row's
    steps first (post-padding)."""

    def __init__(self, rnn: RNNBase, *, return_sequences: bool = False,
                 return_state: bool = False, go_backwards: bool = False,
                 merge_mode: str | None = "concat", zero_output_for_mask: bool | None = False,
                 step_dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = rnn
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards, self.merge_mode = go_backwards, merge_mode
        self.zero_output_for_mask = zero_output_for_mask
        self.step_dropout = step_dropout

    @property
    def bidirectional(self) -> bool:
        return self.rnn.bidirectional

    def extra_repr(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in ("return_sequences", "return_state",
                                                       "go_backwards")
                 if getattr(self, k)]
        if self.bidirectional:
            parts.append(f"merge_mode={self.merge_mode!r}")
        return ", ".join(parts)

    def forward(self, x: Tensor, mask: Tensor | None = None, initial_state=None):
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be a [batch, time, features] tensor, got "
                             f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}")
        B, T = x.shape[:2]
        lengths = None if mask is None else _lengths_of(mask, B, T)
        if self.step_dropout and self.training:
            x = nn.functional.dropout(x, self.step_dropout, training=True)
        hx = self._initial(initial_state, B, x)
        if self.go_backwards:
            x = x.flip(1) if lengths is None else _reverse_rows(x, lengths)
        out, hidden = self.rnn(x, hx, lengths=lengths)
        h_n, c_n = hidden if isinstance(self.rnn, LSTM) else (hidden, None)
        if self.go_backwards and lengths is not None:
            # Keras reverses the whole padded sequence: a row's steps come last
            out = _shift_right(out, T - lengths)
        if lengths is not None and self.return_sequences and not self.zero_output_for_mask:
            if self.zero_output_for_mask is None:
                raise KerasConfigError(
                    "a mask on a Bidirectional with return_sequences: standalone Keras 2 "
                    "repeats the last output at masked steps, tf.keras and Keras 3 give "
                    "zeros; pass keras_version= to from_keras to say which")
            if self.bidirectional:  # the forward layer's half only (standalone Keras 2)
                H = out.shape[-1] // 2
                out = torch.cat([_carry_last(out[..., :H], lengths, before=False, T=T),
                                 out[..., H:]], dim=-1)
            else:
                out = _carry_last(out, lengths, before=self.go_backwards, T=T)
        D = self.rnn.num_directions
        states = [h_n[-D + d] for d in range(D)]
        cells = [] if c_n is None else [c_n[-D + d] for d in range(D)]
        if self.return_sequences:
            result = out
        else:
            result = torch.cat(states, dim=-1)
        if self.bidirectional:
            result = self._merge(result)
        if not self.return_state:
            return result
        per_direction = [s for d in range(D) for s in ([states[d], cells[d]] if cells else [states[d]])]
        return (*(result if isinstance(result, tuple) else (result,)), *per_direction)

    def _merge(self, result: Tensor):
        forward, backward = result.chunk(2, dim=-1)
        if self.merge_mode == "concat":
            return result
        if self.merge_mode == "sum":
            return forward + backward
        if self.merge_mode == "mul":
            return forward * backward
        if self.merge_mode == "ave":
            return (forward + backward) / 2
        return forward, backward

    def _initial(self, initial_state, B: int, x: Tensor):
        if initial_state is None:
            return None
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        per = 2 if isinstance(self.rnn, LSTM) else 1
        D = self.rnn.num_directions
        if len(states) != per * D:
            raise ValueError(f"initial_state must hold {per * D} tensors ({'h and c' if per == 2 else 'h'}"
                             f"{' per direction' if D == 2 else ''}), got {len(states)}")
        h = torch.stack(states[0::per])
        if per == 1:
            return h
        return h, torch.stack(states[1::per])


def _lengths_of(mask: Tensor, B: int, T: int) -> Tensor:
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must be a [batch, time] = {(B, T)} tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    mask = mask.bool()
    lengths = mask.sum(1)
    prefix = torch.arange(T, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(prefix, mask):
        raise ValueError("mask must be True on a prefix of each row (post-padded sequences, as "
                         "Embedding(mask_zero=True) makes them from padding='post'); gru_torch "
                         "runs each row's steps first")
    if bool((lengths == 0).any()):
        raise ValueError("mask: every row needs at least one step to read")
    return lengths.cpu()


def _index(lengths: Tensor, T: int, device) -> Tensor:
    return torch.arange(T, device=device).unsqueeze(0).expand(len(lengths), T)


def _reverse_rows(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first len steps in reverse order, post-padded: y[b, t] = x[b, len-1-t]."""
    T = x.shape[1]
    t = _index(lengths, T, x.device)
    src = (lengths.to(x.device).unsqueeze(1) - 1 - t).clamp(min=0)
    src = torch.where(t < lengths.to(x.device).unsqueeze(1), src, t)
    return x.gather(1, src.unsqueeze(-1).expand_as(x))


def _shift_right(out: Tensor, shift: Tensor) -> Tensor:
    """Each row moved right by its shift, zeros in front."""
    T = out.shape[1]
    t = _index(shift, T, out.device)
    s = shift.to(out.device).unsqueeze(1)
    src = (t - s).clamp(min=0)
    moved = out.gather(1, src.unsqueeze(-1).expand_as(out))
    return torch.where((t >= s).unsqueeze(-1), moved, torch.zeros_like(moved))


def _carry_last(out: Tensor, lengths: Tensor, before: bool, T: int) -> Tensor:
    """Keras's zero_output_for_mask=False: a masked step outputs the last output before
    it (zeros where none came before)."""
    t = _index(lengths, T, out.device)
    n = lengths.to(out.device).unsqueeze(1)
    if before:  # the row's steps last: masked steps come first, with nothing before
        return out
    last = out.gather(1, (n - 1).unsqueeze(-1).expand(-1, 1, out.shape[-1]))
    return torch.where((t < n).unsqueeze(-1), out, last.expand_as(out))


def _version_of_layer(layer) -> KerasVersion:
    module = type(layer).__module__
    if module.startswith("tf_keras"):
        import tf_keras

        return KerasVersion.parse(tf_keras.__version__)
    if module.startswith("keras"):
        import keras

        return KerasVersion.parse(keras.__version__)
    if "tensorflow" in module:
        import tensorflow as tf

        return KerasVersion.parse(getattr(tf.keras, "__version__", "2.4.0"))
    raise TypeError(f"from_keras takes a Keras layer or its serialized config dict, got "
                    f"{type(layer).__module__}.{type(layer).__name__}")


def _serialized(layer) -> dict:
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def from_keras(layer_or_config, weights=None, *, keras_version=None) -> KerasLayer:
    """A module computing what a Keras GRU, LSTM, SimpleRNN (or Bidirectional around one)
    computes. layer_or_config: the live layer, or its {"class_name", "config"} dict;
    weights: get_weights()'s list (a live layer's own by default; for a dict without
    weights the module starts from Keras's default initializers); keras_version: the
    version that wrote a dict (a live layer's own otherwise)."""
    if isinstance(layer_or_config, dict):
        serialized, layer = layer_or_config, None
        version = None if keras_version is None else KerasVersion.parse(keras_version)
    else:
        layer = layer_or_config
        if not hasattr(layer, "get_config"):
            raise TypeError(f"from_keras takes a Keras layer or its serialized config dict, got "
                            f"{type(layer).__name__}")
        version = KerasVersion.parse(keras_version) if keras_version else _version_of_layer(layer)
        serialized = _serialized(layer)
        if weights is None:
            weights = layer.get_weights()
    if "class_name" not in serialized or "config" not in serialized:
        raise KerasConfigError("a serialized layer is a dict with 'class_name' and 'config' "
                               f"keys, got keys {sorted(serialized)}")
    class_name, config = serialized["class_name"], dict(serialized["config"])
    merge_mode, backward = "concat", None
    if class_name == "Bidirectional":
        merge_mode = config.get("merge_mode", "concat")
        if merge_mode not in MERGE_MODES:
            raise KerasConfigError(f"merge_mode={merge_mode!r}: Keras's merge modes are {MERGE_MODES}")
        inner = config.get("layer")
        if not isinstance(inner, dict):
            raise KerasConfigError("Bidirectional's config has no 'layer'")
        backward = config.get("backward_layer")
        class_name, config = inner["class_name"], dict(inner["config"])
    if class_name not in KINDS:
        raise KerasConfigError(f"class_name={class_name!r}: from_keras converts GRU, LSTM and "
                               "SimpleRNN layers (and Bidirectional around one)")
    kind = KINDS[class_name]
    bidirectional = backward is not None or serialized["class_name"] == "Bidirectional"
    if backward is not None:
        _check_backward(backward, class_name, config)
    _check_config(kind, config)
    dropout = dropout_semantics(kind, config, version)
    if dropout.masks == "per_step" and bidirectional:
        raise KerasConfigError(f"dropout={config.get('dropout')}: tf.keras's fused "
                               f"{class_name} drops each input element on its own, in each "
                               "direction of a Bidirectional separately; gru_torch's two "
                               "directions read one input")
    module = _build(kind, config, version, dropout, bidirectional, weights)
    # tf.keras's and Keras 3's Bidirectional give their layers zero outputs at masked steps;
    # standalone Keras 2's repeats the forward layer's last output (the backward layer's
    # masked steps come first, before any output, and stay zero)
    zero_masked = bool(config.get("zero_output_for_mask", False))
    if not zero_masked and bidirectional and config.get("return_sequences"):
        zero_masked = None if version is None else (version.major == 3 or version.tf_keras)
    return KerasLayer(module, return_sequences=bool(config.get("return_sequences", False)),
                      return_state=bool(config.get("return_state", False)),
                      go_backwards=bool(config.get("go_backwards", False)) and not bidirectional,
                      merge_mode=merge_mode, zero_output_for_mask=zero_masked,
                      step_dropout=dropout.input_rate if dropout.masks == "per_step" else 0.0)


def _check_backward(backward: dict, class_name: str, config: dict) -> None:
    inner = backward.get("config", {})
    if backward.get("class_name") != class_name:
        raise KerasConfigError(f"backward_layer={backward.get('class_name')!r}: a Bidirectional "
                               f"of a {class_name} forward and another backward layer")
    for key in ("units", "activation", "recurrent_activation", "use_bias", "reset_after",
                "dropout", "recurrent_dropout"):
        if _name_of(inner.get(key)) != _name_of(config.get(key)):
            raise KerasConfigError(f"backward_layer's {key}={inner.get(key)!r} differs from the "
                                   f"forward layer's {config.get(key)!r}")


def _build(kind: str, config: dict, version: KerasVersion | None, dropout: Dropout,
           bidirectional: bool, weights) -> RNNBase:
    units = config.get("units")
    if not isinstance(units, int) or units <= 0:
        raise KerasConfigError(f"units={units!r}: a positive int is needed")
    use_bias = bool(config.get("use_bias", True))
    masks = "per_gate" if dropout.masks == "per_gate" else "shared"
    per_seq_input = 0.0 if dropout.masks == "per_step" else dropout.input_rate
    common = dict(bias=use_bias, batch_first=True, bidirectional=bidirectional,
                  recurrent_dropout=dropout.recurrent_rate, input_dropout=per_seq_input,
                  dropout_masks=masks)
    in_size = _input_size(weights, config)
    gate = _gate_activation(kind, config, version)
    if kind == "gru":
        reset_after = config.get("reset_after")
        if reset_after is None:
            if version is None:
                raise KerasConfigError("reset_after is not in the config, and its default "
                                       "depends on the Keras version; pass keras_version=")
            reset_after = version.major == 3 or version.tf_keras
        module = GRU(in_size, units, reset_after=bool(reset_after), recurrent_activation=gate,
                     **common)
    elif kind == "lstm":
        module = LSTM(in_size, units, single_bias=True, recurrent_activation=gate, **common)
    else:
        activation = _name_of(config.get("activation", "tanh"))
        module = RNN(in_size, units, nonlinearity=activation, single_bias=True, **common)
    if weights is None:
        _keras_init(module, kind, config)
    else:
        _load(module, list(weights), bidirectional, use_bias)
    return module


def _input_size(weights, config: dict) -> int:
    if weights:
        kernel = weights[0]
        shape = tuple(getattr(kernel, "shape", ()))
        if len(shape) != 2:
            raise KerasConfigError(f"weights[0] (the kernel) must be 2-D [input, gates*units], "
                                   f"got shape {shape}")
        return int(shape[0])
    for key in ("batch_input_shape", "batch_shape", "input_shape"):
        shape = config.get(key)
        if shape and shape[-1]:
            return int(shape[-1])
    if config.get("input_dim"):
        return int(config["input_dim"])
    build = config.get("build_config", {}).get("input_shape")
    if build and build[-1]:
        return int(build[-1])
    raise KerasConfigError("the input size is neither in the weights nor in the config "
                           "(batch_input_shape / build_config); pass weights=")


def _load(module: RNNBase, weights: list, bidirectional: bool, use_bias: bool) -> None:
    per = 3 if use_bias else 2
    want = per * (2 if bidirectional else 1)
    if len(weights) != want:
        raise KerasConfigError(f"weights: a {'Bidirectional ' if bidirectional else ''}layer "
                               f"{'with' if use_bias else 'without'} a bias has {want} arrays, "
                               f"got {len(weights)}")
    module.load_keras_weights(weights[:per], 0, False)
    if bidirectional:
        module.load_keras_weights(weights[per:], 0, True)


def _keras_init(module: RNNBase, kind: str, config: dict) -> None:
    for key, default in _DEFAULT_INITIALIZERS.items():
        name = (_name_of(config.get(key)) or default).replace("_", "").lower()
        if name != default:
            raise KerasConfigError(f"{key}={_name_of(config.get(key))!r}: without weights= the "
                                   "module starts from Keras's default initializers only")
    if kind == "lstm" and not config.get("unit_forget_bias", True):
        for name, p in module.named_parameters():
            if name.startswith("bias"):
                torch.nn.init.zeros_(p)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith("weight_ih"):
                    initializers.glorot_uniform_(p)
                elif name.startswith("weight_hh"):
                    initializers.orthogonal_(p)
        return
    initializers.keras_recurrent_init_(module)

