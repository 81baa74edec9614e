"""Keras 3 recurrent layers on gru_torch's fused ops: `GRU`, `LSTM` and `SimpleRNN` for
Keras on its torch backend (`KERAS_BACKEND=torch`).

    from gru_torch.keras import GRU, LSTM, SimpleRNN

Each is Keras's own layer (a subclass of keras.layers.GRU, LSTM, SimpleRNN): the same
constructor, defaults, weights (cell.kernel, cell.recurrent_kernel, cell.bias in Keras's
gate order and bias layout), get_config and serialization, so get_weights/set_weights and
saved .keras files interchange with Keras's layers, and keras.layers.Bidirectional wraps
them. Only the loop over time differs: Keras's RNN.call draws the dropout masks, makes the
initial states and returns what the layer returns; it asks `inner_loop` for the last
output, the outputs and the final states, and here `inner_loop` computes them with one
fused op call (gru_torch.ops.rnn_layer), the weights converted to nn's layout by
differentiable torch ops on the Keras variables' torch tensors, so gradients reach them.

What Keras 3 computes (keras/src/layers/rnn/{gru,lstm,simple_rnn,rnn}.py,
keras/src/backend/torch/rnn.py; docs/keras.md says it at length):
- `recurrent_activation` "sigmoid" or "hard_sigmoid" (Keras 3's relu6(x + 3) / 6);
  `activation` "tanh" (SimpleRNN: "tanh" or "relu");
- dropout: the masks Keras's cell draws and caches for the call (`get_dropout_mask`),
  applied as the cell applies them: one per gate when the cell's implementation is 1
  (Keras sets it whenever recurrent_dropout > 0), else one for all gates; a GRU's and
  an LSTM's only for rates strictly between 0 and 1, as their cells test;
- a mask [batch, time]: each row's True steps must be one run (post- or pre-padding, as
  Embedding(mask_zero=True) gives them); before the run the state stays the initial one
  and the output is zero, after it the state is carried and the output is the last one
  (zeros with zero_output_for_mask, as Bidirectional sets it with return_sequences);
- go_backwards reverses the whole padded sequence (and its mask), as Keras does.

Anything else the fused op cannot honour (another activation, a mask that is not one run
per row) runs Keras's own loop, with a warning that says why. Outside the torch backend
the layers raise an error. Importing this module needs no Keras; the classes are made
(and registered with Keras's serialization as "gru_torch>GRU", ...) on first access.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import backends, ops
from .cellspec import Cell
from .reference import rnn_layer_reference

# The Keras releases this module is tested against (requirements-dev.txt pins the one CI
# runs); it relies on RNN.call asking inner_loop(sequences, initial_state, mask, training)
# for (last_output, outputs, states) and on the cells' cached dropout masks.
TESTED_KERAS = ((3, 15), (3, 15))
LAYERS = ("GRU", "LSTM", "SimpleRNN")
__all__ = list(LAYERS) + ["TESTED_KERAS"]

_classes: dict[str, type] = {}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


def __getattr__(name: str):
    if name in LAYERS:
        return _make_classes()[name]
    raise AttributeError(f"module 'gru_torch.keras' has no attribute {name!r}")


def _keras():
    try:
        import keras
    except ImportError as e:
        raise ImportError("gru_torch.keras needs Keras 3 (pip install 'keras>=3'), run on "
                          "its torch backend (KERAS_BACKEND=torch)") from e
    return keras


def check_version(version: str) -> str | None:
    """Why this Keras version is outside the tested range, or None."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return f"cannot read Keras's version {version!r}"
    lo, hi = TESTED_KERAS
    if not lo <= (major, minor) <= hi:
        return (f"gru_torch.keras is tested with Keras {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, "
                f"and this is Keras {version}")
    return None


def _check_backend(keras, name: str) -> None:
    backend = keras.backend.backend()
    if backend != "torch":
        raise RuntimeError(f"gru_torch.keras.{name} runs on Keras's torch backend only "
                           f"(set KERAS_BACKEND=torch before importing keras); this Keras runs "
                           f"the {backend!r} backend. Use keras.layers.{name} there")


# ---------------------------------------------------------------- weights and masks
def _gru_order(m: Tensor, H: int) -> Tensor:
    """Keras's GRU gate blocks z, r, h along the last axis -> nn's r, z, n."""
    return torch.cat([m[..., H:2 * H], m[..., :H], m[..., 2 * H:]], dim=-1)


def layer_weights(kind: str, reset_after: bool, kernel: Tensor, recurrent: Tensor,
                  bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Keras's kernel [I, G], recurrent_kernel [H, G] and bias as the ops' w_ih [1, G, I],
    w_hh [1, G, H], b_ih [1, G], b_hh [1, G] (or None), in differentiable torch ops."""
    H = recurrent.shape[0]
    order = (lambda m: _gru_order(m, H)) if kind == "gru" else (lambda m: m)
    w_ih = order(kernel).t().unsqueeze(0)
    w_hh = order(recurrent).t().unsqueeze(0)
    b_ih = b_hh = None
    if bias is not None:
        if kind == "gru" and reset_after:  # [2, 3H]: input row, recurrent row
            b_ih, b_hh = order(bias[0]).unsqueeze(0), order(bias[1]).unsqueeze(0)
        else:
            b_ih = order(bias).unsqueeze(0)
    return w_ih, w_hh, b_ih, b_hh


def _gate_masks(kind: str, masks) -> Tensor | None:
    """A Keras cell's cached dropout mask(s) as the ops' [1, B, M, K]: one [B, K] mask
    (M = 1) or one per gate in Keras's gate order (M = gates, reordered to nn's)."""
    if masks is None:
        return None
    if isinstance(masks, (list, tuple)):
        masks = list(masks)
        if kind == "gru":
            masks = [masks[1], masks[0], masks[2]]
        return torch.stack(masks, dim=1).unsqueeze(0)
    return masks.unsqueeze(1).unsqueeze(0)


def mask_runs(mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """(start, length) per row of a [B, T] mask whose True steps form one run, or None
    where some row's do not."""
    mask = mask.bool()
    T = mask.shape[1]
    length = mask.sum(1)
    start = torch.where(length > 0, mask.int().argmax(1), torch.zeros_like(length))
    t = torch.arange(T, device=mask.device).unsqueeze(0)
    run = (t >= start.unsqueeze(1)) & (t < (start + length).unsqueeze(1))
    if not torch.equal(run, mask):
        return None
    return start, length


# ---------------------------------------------------------------- the loop over time
def run_layer(cell: Cell, x: Tensor, h0: Tensor, c0: Tensor | None, weights: tuple,
              input_mask: Tensor | None, recurrent_mask: Tensor | None, runs,
              go_backwards: bool, zero_output_for_mask: bool, return_sequences: bool,
              layer_fn=ops.rnn_layer):
    """What Keras's backend.rnn returns for this cell: (last_output [B, H], outputs
    [B, T, H] (or [B, 1, H] without return_sequences), h_n [B, H], c_n [B, H] or None).

    x [B, T, I], h0/c0 [B, H]; runs: mask_runs() of the mask in Keras's step order
    (reversed already for go_backwards), or None without a mask."""
    B, T = x.shape[:2]
    xt = x.transpose(0, 1)  # [T, B, I]
    if go_backwards:
        xt = xt.flip(0)
    lengths = None
    if runs is not None:
        start, length = runs
        if bool((start == 0).all()) and bool((length == T).all()):
            runs = None  # every step of every row
        else:
            lengths = length.clamp(min=1)  # a row of no step: fixed below
            if bool((start > 0).any()):  # each row's run moved to its front
                t = torch.arange(T, device=x.device).unsqueeze(1)
                src = (t + start.unsqueeze(0)).clamp(max=T - 1)
                xt = xt.gather(0, src.unsqueeze(-1).expand_as(xt))
    out, h_n, c_n = layer_fn(cell, xt, h0.unsqueeze(0), None if c0 is None else c0.unsqueeze(0),
                             *weights, None, input_mask, recurrent_mask, lengths)
    h_n, c_n = h_n[0], None if c_n is None else c_n[0]
    if runs is None:
        last = h_n
        outputs = out.transpose(0, 1) if return_sequences else last.unsqueeze(1)
        return last, outputs, h_n, c_n
    start, length = runs
    empty = (length == 0).unsqueeze(1)
    if bool(empty.any()):  # a row of no step keeps its initial state
        h_n = torch.where(empty, h0, h_n)
        c_n = None if c_n is None else torch.where(empty, c0, c_n)
    # a step after the run outputs the run's last output (h_n), or zeros
    ends = (start + length == T) | (length > 0 if not zero_output_for_mask
                                    else torch.zeros_like(length, dtype=torch.bool))
    last = torch.where(ends.unsqueeze(1), h_n, torch.zeros_like(h_n))
    if not return_sequences:
        return last, last.unsqueeze(1), h_n, c_n
    t = torch.arange(T, device=x.device).unsqueeze(1)  # [T, 1]
    s, n = start.unsqueeze(0), length.unsqueeze(0)     # [1, B]
    src = (t - s).clamp(min=0, max=T - 1)
    moved = out.gather(0, src.unsqueeze(-1).expand_as(out))
    inside = ((t >= s) & (t < s + n)).unsqueeze(-1)
    after = (t >= s + n).unsqueeze(-1)
    carried = h_n.unsqueeze(0) if not zero_output_for_mask else torch.zeros_like(h_n).unsqueeze(0)
    carried = torch.where(empty.unsqueeze(0), torch.zeros_like(carried), carried)
    seq = torch.where(inside, moved, torch.where(after, carried, torch.zeros_like(moved)))
    return last, seq.transpose(0, 1), h_n, c_n


def _nn_layer(cell: Cell, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, input_mask, recurrent_mask,
              lengths):
    """One direction through torch.nn's kernel (cuDNN on a GPU), rnn_layer's arguments;
    the caller has checked that nn can express it (no dropout masks)."""
    mode = {"GRU": "gru", "LSTM": "lstm", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
    kernel = getattr(torch._VF, mode[cell.nn_mode])
    has_bias = b_ih is not None
    flat = [w_ih[0], w_hh[0]]
    if has_bias:
        flat += [b_ih[0], b_hh[0] if b_hh is not None else torch.zeros_like(b_ih[0])]
    h = (hx, cx) if cell.has_c else hx
    if lengths is None:
        result = kernel(x, h, flat, has_bias, 1, 0.0, False, False, False)
        return result[0], result[1], (result[2] if cell.has_c else None)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    index = packed.sorted_indices.to(x.device)
    h = (hx.index_select(1, index), cx.index_select(1, index)) if cell.has_c \
        else hx.index_select(1, index)
    result = kernel(packed.data, packed.batch_sizes, h, flat, has_bias, 1, 0.0, False, False)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(
        torch.nn.utils.rnn.PackedSequence(result[0], packed.batch_sizes, packed.sorted_indices,
                                          packed.unsorted_indices), total_length=x.shape[0])
    back = packed.unsorted_indices.to(x.device)
    return (out, result[1].index_select(1, back),
            result[2].index_select(1, back) if cell.has_c else None)


LAYER_FNS = {"fused": ops.rnn_layer, "reference": rnn_layer_reference, "cudnn": _nn_layer}


# ---------------------------------------------------------------- the layers
def _activation_name(keras, fn, allowed: tuple) -> str | None:
    """The name of a Keras activation function among `allowed`, by identity (a user's
    own function of the same name is not Keras's), or None."""
    for name in allowed:
        if fn is getattr(keras.activations, name):
            return name
    return None


def _make_classes() -> dict[str, type]:
    if _classes:
        return _classes
    keras = _keras()
    why = check_version(keras.__version__)
    if why:
        warnings.warn(f"{why}; its layers may compute differently from what this module "
                      "expects. Run tests/test_keras_layers.py against it", stacklevel=3)

    class FusedRNN:
        """The fused loop over time for a Keras 3 GRU, LSTM or SimpleRNN (mixed in before
        Keras's class; see the module's docstring)."""

        _kind = ""

        def __init__(self, *args, **kwargs):
            _check_backend(keras, type(self).__name__)
            super().__init__(*args, **kwargs)

        def _cell_spec(self) -> Cell | str:
            """The gru_torch cell this layer computes, or why none does."""
            cell = self.cell
            name = type(self).__name__
            if self._kind == "rnn":
                act = _activation_name(keras, cell.activation, ("tanh", "relu"))
                if act is None:
                    return f"activation={cell.activation!r} (the fused SimpleRNN has tanh or relu)"
                return Cell("rnn", activation=act)
            if _activation_name(keras, cell.activation, ("tanh",)) is None:
                return f"activation={cell.activation!r} (the fused {name}'s is tanh)"
            gate = _activation_name(keras, cell.recurrent_activation, ("sigmoid", "hard_sigmoid"))
            if gate is None:
                return (f"recurrent_activation={cell.recurrent_activation!r} (the fused "
                        f"{name}'s gates are sigmoid or hard_sigmoid)")
            gate = "hard_sigmoid_keras3" if gate == "hard_sigmoid" else gate
            if self._kind == "gru":
                return Cell("gru", reset_after=bool(cell.reset_after), recurrent_activation=gate)
            return Cell("lstm", recurrent_activation=gate)

        def _fallback(self, why: str, sequences, initial_state, mask, training):
            _warn_once(f"gru_torch.keras.{type(self).__name__}: {why}; running Keras's own "
                       f"{type(self).__name__} loop instead (the same results, slower)")
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)

        def inner_loop(self, sequences, initial_state, mask, training=False):
            if isinstance(mask, (list, tuple)):
                mask = mask[0]
            spec = self._cell_spec()
            if isinstance(spec, str):
                return self._fallback(spec, sequences, initial_state, mask, training)
            runs = None
            if mask is not None:
                runs = mask_runs(mask.flip(1) if self.go_backwards else mask)
                if runs is None:
                    return self._fallback(
                        "a mask whose True steps are not one run in each row (the fused op "
                        "reads each row's steps as one stretch)", sequences, initial_state,
                        mask, training)
            cell = self.cell
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) \
                else [initial_state]
            if self.stateful:  # Keras assigns the final states into these tensors
                states = [s.clone() for s in states]
            h0, c0 = states[0], (states[1] if spec.has_c else None)
            x = sequences
            dtype = x.dtype
            weights = layer_weights(
                self._kind, getattr(cell, "reset_after", False), cell.kernel.value.to(dtype),
                cell.recurrent_kernel.value.to(dtype),
                cell.bias.value.to(dtype) if cell.use_bias else None)
            in_mask = rec_mask = None
            # the cells' own tests: SimpleRNNCell applies any mask it drew, GRUCell and
            # LSTMCell only for rates strictly between 0 and 1
            applies = (lambda r: r > 0) if self._kind == "rnn" else (lambda r: 0.0 < r < 1.0)
            if training and applies(cell.dropout):
                in_mask = _gate_masks(self._kind, cell.get_dropout_mask(x[:, 0, :]))
            if training and applies(cell.recurrent_dropout):
                rec_mask = _gate_masks(self._kind, cell.get_recurrent_dropout_mask(h0))
            per_gate = any(m is not None and m.shape[2] > 1 for m in (in_mask, rec_mask))
            cfg = backends.Config(x.device, dtype, spec, in_mask is not None or rec_mask is not None,
                                  backends.active_transform((x, h0)),
                                  "per_gate" if per_gate else "shared", in_mask is not None,
                                  hidden=h0.shape[-1])
            backend = backends.resolve("auto", cfg)
            last, outputs, h_n, c_n = run_layer(
                spec, x, h0, c0, weights, in_mask, rec_mask, runs, self.go_backwards,
                bool(self.zero_output_for_mask), self.return_sequences, LAYER_FNS[backend])
            return last, outputs, ([h_n, c_n] if spec.has_c else [h_n])

    register = keras.saving.register_keras_serializable(package="gru_torch")

    @register
    class GRU(FusedRNN, keras.layers.GRU):
        __doc__ = f"keras.layers.GRU on gru_torch's fused ops.\n\n{keras.layers.GRU.__doc__}"
        _kind = "gru"

    @register
    class LSTM(FusedRNN, keras.layers.LSTM):
        __doc__ = f"keras.layers.LSTM on gru_torch's fused ops.\n\n{keras.layers.LSTM.__doc__}"
        _kind = "lstm"

    @register
    class SimpleRNN(FusedRNN, keras.layers.SimpleRNN):
        __doc__ = (f"keras.layers.SimpleRNN on gru_torch's fused ops.\n\n"
                   f"{keras.layers.SimpleRNN.__doc__}")
        _kind = "rnn"

    for cls in (GRU, LSTM, SimpleRNN):
        cls.__module__ = __name__
    _classes.update(GRU=GRU, LSTM=LSTM, SimpleRNN=SimpleRNN)
    return _classes
