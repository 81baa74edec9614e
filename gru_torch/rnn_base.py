"""What gru_torch.GRU, LSTM and RNN share, in nn.RNNBase's role: the constructor's checks,
the parameters and their names, the input handling, the backends and the conversions.

Each subclass (gru.py, lstm.py, rnn.py) names its cell and its constructor's arguments;
the forward, the masks, the state_dict and every error are written once, here. The
modules take nn's arguments, names and errors, and, keyword-only, gru_torch's own:
`recurrent_activation` (GRU, LSTM), `reset_after` (GRU), `single_bias` (LSTM, RNN),
`recurrent_dropout`, `input_dropout`, `dropout_masks` and `backend`, and
`forward(..., lengths=)`.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from . import _checks, _ext, _inputs, backends, ops
from .cellspec import Cell, mask_width
from .reference import rnn_layer_reference


def draw_mask(shape, rate: float, like: Tensor) -> Tensor:
    """A variational dropout mask, scaled by 1/(1 - rate); a rate of 1 drops everything
    (as dropout(p=1) gives zeros) rather than scaling by infinity."""
    keep = 1.0 - rate
    if keep == 0:
        return like.new_zeros(shape)
    return torch.bernoulli(like.new_full(shape, keep)) / keep


_NN_KERNELS = {"GRU": "gru", "LSTM": "lstm", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


class RNNBase(nn.Module):
    """The shared part of gru_torch.GRU, LSTM and RNN (see their docstrings)."""

    _name = "RNN"  # the module's name in nn's messages ("GRU", "LSTM", "RNN")
    _nn_class: type = nn.RNNBase

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 single_bias: bool = False, recurrent_dropout: float = 0.0,
                 input_dropout: float = 0.0, dropout_masks: str = "shared",
                 backend: str = "auto") -> None:
        super().__init__()
        dropout = _checks.check_rnn_args(self._name, input_size, hidden_size, num_layers, bias,
                                         batch_first, dropout, bidirectional, proj_size)
        _checks.check_extras(recurrent_dropout, input_dropout, dropout_masks, backend,
                             **self._own_checks(single_bias))
        # Stored as given, as nn stores them (its repr and arithmetic see the same values).
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = dropout
        self.proj_size = proj_size
        self.single_bias = single_bias
        self.recurrent_dropout = float(recurrent_dropout)
        self.input_dropout = float(input_dropout)
        self.dropout_masks = dropout_masks
        self.backend = backend
        _ext.status()  # find (or JIT-build) the op now, not inside a traced forward
        factory = {"device": device, "dtype": dtype}
        # nn's arithmetic: an RNN's gate size is hidden_size itself (a bool stays one, and
        # torch.empty refuses it as nn's does)
        G = hidden_size if self.cell.gates == 1 else self.cell.gates * hidden_size
        P = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []  # [layer * num_directions + direction] -> names
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else P * self.num_directions
            for suffix in self._suffixes():
                shapes = {f"weight_ih_l{layer}{suffix}": (G, in_size),
                          f"weight_hh_l{layer}{suffix}": (G, P)}
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (G,)
                    if self._two_biases:
                        shapes[f"bias_hh_l{layer}{suffix}"] = (G,)
                if proj_size > 0:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names += list(shapes)
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    # ---- what the subclasses say
    @property
    def cell(self) -> Cell:
        raise NotImplementedError

    def _own_checks(self, single_bias) -> dict:
        """check_extras's arguments for the cell's own options (stored by the subclass
        before RNNBase.__init__, checked after nn's own, as nn's come first)."""
        return {"single_bias": single_bias}

    @property
    def _two_biases(self) -> bool:
        """b_ih and b_hh as nn keeps them, or Keras's one bias (bias_ih) alone."""
        return not self.single_bias

    def _own_options(self) -> list[tuple[str, object]]:
        """gru_torch's arguments of this module and their defaults, for the repr."""
        return [("single_bias", False), ("recurrent_dropout", 0.0), ("input_dropout", 0.0),
                ("dropout_masks", "shared"), ("backend", "auto")]

    # ---- nn.RNNBase's attributes
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"] if self.bidirectional else [""]

    def reset_parameters(self) -> None:
        """nn's initialization: every parameter uniform in +-1/sqrt(hidden_size)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Accepted for nn compatibility; the parameters need no flattening here."""

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """nn's flat list of the current weights (after any reparametrization, None for a
        deleted one), read fresh on every access."""
        return [getattr(self, n) if hasattr(self, n) else None for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        # nn's text for the shared arguments, then gru_torch's own where not default
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        for name, default in self._own_options():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # ---- one layer's parameters, stacked over directions, as the layer ops take them
    def _layer_params(self, layer: int) -> dict[str, Tensor | None]:
        D = self.num_directions
        kinds = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
        stacked = {}
        for kind in kinds:
            ts = []
            for names in self._all_weights[layer * D:(layer + 1) * D]:
                name = next((n for n in names if n.startswith(_PARAM_PREFIX[kind])), None)
                ts.append(None if name is None else getattr(self, name))
            stacked[kind] = None if ts[0] is None else (
                ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts))
        return stacked

    def _spec(self) -> _inputs.Spec:
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        return _inputs.Spec(self.input_size, P, self.num_layers, self.num_directions,
                            self.batch_first, self.bias, getattr(self, self._flat_weights_names[0]),
                            self._name, self.hidden_size if self.cell.has_c else None)

    def _dropout_active(self) -> tuple[bool, bool]:
        """(recurrent, input) masks drawn in this call: in training only."""
        if self.recurrent_dropout == 0 and self.input_dropout == 0:
            return False, False  # (train and eval do not differ: self.training unread)
        return (self.training and self.recurrent_dropout > 0,
                self.training and self.input_dropout > 0)

    def _config(self, call: _inputs.Call) -> backends.Config:
        recurrent, inputs = self._dropout_active()
        tensors = itertools.chain((call.x, call.hx, call.cx),
                                  (getattr(self, n) for n in self._flat_weights_names))
        return backends.Config(call.x.device, call.x.dtype, self.cell, recurrent or inputs,
                               backends.active_transform(tensors), self.dropout_masks, inputs,
                               self.proj_size > 0, self.num_directions, self.hidden_size)

    def training_config(self, device: torch.device | None = None) -> backends.Config:
        """What a training call of this module on `device` asks of the backends."""
        w = getattr(self, self._flat_weights_names[0])
        inputs = self.input_dropout > 0
        return backends.Config(w.device if device is None else device, w.dtype, self.cell,
                               inputs or self.recurrent_dropout > 0, None, self.dropout_masks,
                               inputs, self.proj_size > 0, self.num_directions, self.hidden_size)

    def _initial_states(self, call: _inputs.Call) -> tuple[Tensor, Tensor | None]:
        """The call's (h0, c0), zeros where it gave none; c0 is None without a cell state."""
        x = call.x
        L, D, B = self.num_layers, self.num_directions, x.shape[1]
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        h0 = call.hx if call.hx is not None else x.new_zeros(L * D, B, P)
        c0 = None
        if self.cell.has_c:
            c0 = call.cx if call.cx is not None else x.new_zeros(L * D, B, self.hidden_size)
        return h0, c0

    def _choose_backend(self, call: _inputs.Call) -> str:
        cfg = self._config(call)
        if not call.mixed_dtypes:
            return backends.resolve(self.backend, cfg)
        why = backends.nn_reason(cfg)
        if why:
            weight = getattr(self, self._flat_weights_names[0])
            if not torch._C._is_any_autocast_enabled():  # an LSTM's state
                bad = next(t for t in (call.hx, call.cx)
                           if t is not None and t.dtype != weight.dtype)
                raise RuntimeError(f"{_checks.linear_error(bad, weight, self.bias)} (hx dtype "
                                   f"{bad.dtype} does not match the {self._name}'s parameters, "
                                   f"{weight.dtype}, and {why})")
            raise ValueError(f"{_checks.input_dtype_message(call.x.dtype, weight.dtype)} "
                             f"(under autocast gru_torch runs an input or hx of another dtype "
                             f"than the weights through {cfg.nn_name}'s kernel, and {why})")
        return "cudnn"

    # ---- forward
    def forward(self, input, hx=None, lengths: Tensor | None = None):
        try:
            call = _inputs.normalize(input, hx, lengths, self._spec())
        except _inputs.PackedDeviceError as e:
            raise self._nn_packed_error(input, hx, e) from None
        x = call.x
        h0, c0 = self._initial_states(call)
        backend = self._choose_backend(call)
        if backend == "cudnn":
            out, h_n, c_n = self._forward_nn(x, h0, c0, call.lengths)
        else:
            layer_fn = ops.rnn_layer if backend == "fused" else rnn_layer_reference
            out, h_n, c_n = self._forward_layers(layer_fn, x, h0, c0, call.lengths)
        hidden = (h_n, c_n) if self.cell.has_c else h_n
        return call.restore.output(out), call.restore.hidden(hidden)

    def _nn_flat_weights(self) -> list[Tensor]:
        """The flat weights nn's kernel takes: a zero b_hh for a layer of one bias."""
        if self._two_biases or not self.bias:
            return self._flat_weights
        flat = []
        for names in self._all_weights:
            ws = [getattr(self, n) for n in names]
            flat += ws[:3] + [torch.zeros_like(ws[2])] + ws[3:]
        return flat

    def _nn_kernel(self):
        return getattr(torch._VF, _NN_KERNELS[self.cell.nn_mode])

    def _nn_packed_error(self, packed, hx, error: RuntimeError) -> RuntimeError:
        """The error nn's kernel raises for this packed call (see PackedDeviceError), with
        gru_torch's detail; where that kernel has no such cell, or runs, only the detail."""
        if self.cell.nn_reason() is None:
            data, batch_sizes, sorted_indices, _ = packed
            try:
                if hx is None:
                    P = self.proj_size if self.proj_size > 0 else self.hidden_size
                    h = data.new_zeros(self.num_layers * self.num_directions, int(batch_sizes[0]), P)
                    hx = (h, data.new_zeros(*h.shape[:2], self.hidden_size)) if self.cell.has_c else h
                elif sorted_indices is not None:
                    hx = (tuple(t.index_select(1, sorted_indices) for t in hx) if self.cell.has_c
                          else hx.index_select(1, sorted_indices))
                self._nn_kernel()(data, batch_sizes, hx, self._nn_flat_weights(), self.bias,
                                  self.num_layers, 0.0, False, self.bidirectional)
            except (RuntimeError, TypeError, IndexError, ValueError) as nn_error:
                return type(nn_error)(f"{nn_error} ({error})")
        return error

    def _masks(self, B: int, in_size: int, like: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """This layer's (input, recurrent) dropout masks, [D, B, M, I] and [D, B, M, P]."""
        recurrent, inputs = self._dropout_active()
        M = mask_width(self.dropout_masks, self.cell)
        D, P = self.num_directions, self.proj_size if self.proj_size > 0 else self.hidden_size
        in_mask = draw_mask((D, B, M, in_size), self.input_dropout, like) if inputs else None
        rec_mask = draw_mask((D, B, M, P), self.recurrent_dropout, like) if recurrent else None
        return in_mask, rec_mask

    def _forward_layers(self, layer_fn, x: Tensor, h0: Tensor, c0: Tensor | None,
                        lengths: Tensor | None):
        D = self.num_directions
        lengths_dev = None if lengths is None else lengths.to(x.device)
        finals, cells = [], []
        for layer in range(self.num_layers):
            p = self._layer_params(layer)
            in_mask, rec_mask = self._masks(x.shape[1], x.shape[2], x)
            rows = slice(layer * D, (layer + 1) * D)
            x, h_n, c_n = layer_fn(self.cell, x, h0[rows], None if c0 is None else c0[rows],
                                   p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["w_hr"],
                                   in_mask, rec_mask, lengths_dev)
            finals.append(h_n)
            cells.append(c_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return x, torch.cat(finals), (torch.cat(cells) if self.cell.has_c else None)

    def _forward_nn(self, x: Tensor, h0: Tensor, c0: Tensor | None, lengths: Tensor | None):
        """The whole stack through nn's kernel (cuDNN on a GPU)."""
        args = (self._nn_flat_weights(), self.bias, self.num_layers, self.dropout,
                self.training, self.bidirectional)
        kernel = self._nn_kernel()
        hx = (h0, c0) if self.cell.has_c else h0
        if lengths is None:
            result = kernel(x, hx, *args, False)
            return result[0], result[1], (result[2] if self.cell.has_c else None)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        index = packed.sorted_indices.to(h0.device)
        hx = (h0.index_select(1, index), c0.index_select(1, index)) if self.cell.has_c \
            else h0.index_select(1, index)
        result = kernel(packed.data, packed.batch_sizes, hx, *args)
        out, _ = nn.utils.rnn.pad_packed_sequence(
            nn.utils.rnn.PackedSequence(result[0], packed.batch_sizes, packed.sorted_indices,
                                        packed.unsorted_indices), total_length=x.shape[0])
        back = packed.unsorted_indices.to(h0.device)
        h_n = result[1].index_select(1, back)
        c_n = result[2].index_select(1, back) if self.cell.has_c else None
        return out, h_n, c_n

    # ---- conversions
    def _nn_kwargs(self) -> dict:
        """The constructor arguments nn's module takes beside the shared ones."""
        return {}

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs):
        """A gru_torch module with the same configuration and weights as `module`
        (nn.GRU for GRU, nn.LSTM for LSTM, nn.RNN for RNN)."""
        if not isinstance(module, cls._nn_class):
            raise TypeError(f"from_torch expects a torch.nn.{cls._nn_class.__name__}, got "
                            f"{type(module).__name__}")
        p = module.weight_ih_l0
        new = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, dropout=float(module.dropout),
                  bidirectional=module.bidirectional, device=p.device, dtype=p.dtype,
                  **cls._from_torch_kwargs(module), **kwargs)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict:
        return {}

    def to_torch(self) -> nn.Module:
        """The torch.nn module (nn.GRU, nn.LSTM, nn.RNN) with the same configuration and
        weights; a ValueError where nn has no such cell."""
        why = self.cell.nn_reason()
        if why:
            raise ValueError(f"to_torch: {why}")
        dropped = [n for n in ("recurrent_dropout", "input_dropout") if getattr(self, n) > 0]
        if dropped:
            backends.warn_once(f"to_torch: {self._nn_class.__name__} has no Keras dropout; the "
                               f"converted module drops {', '.join(dropped)}")
        p = self.weight_ih_l0
        module = self._nn_class(self.input_size, self.hidden_size, self.num_layers,
                                bias=self.bias, batch_first=self.batch_first,
                                dropout=self.dropout, bidirectional=self.bidirectional,
                                device=p.device, dtype=p.dtype, **self._nn_kwargs())
        state = self.state_dict()
        if not self._two_biases and self.bias:
            for names in self._all_weights:
                state[names[2].replace("bias_ih", "bias_hh")] = torch.zeros_like(state[names[2]])
        module.load_state_dict(state)
        return module.train(self.training)

    def load_keras_weights(self, weights, layer: int = 0, reverse: bool = False) -> None:
        """Loads what a Keras layer's get_weights() returns (a GRU, LSTM or SimpleRNN of
        this module's cell) into one layer-direction, so that it computes what that layer
        computes."""
        from . import keras_weights

        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        if reverse and not self.bidirectional:
            raise ValueError(f"reverse=True needs a bidirectional {self._name}")
        if self.proj_size > 0:
            raise ValueError("load_keras_weights: Keras's LSTM has no projections (proj_size)")
        names = self._all_weights[layer * self.num_directions + (1 if reverse else 0)]
        in_size = getattr(self, names[0]).shape[1]
        converted = keras_weights.convert_weights(weights, self.cell, in_size, self.hidden_size)
        keras_weights.copy_into(self, names, converted, self._name)


_PARAM_PREFIX = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
                 "w_hr": "weight_hr"}
