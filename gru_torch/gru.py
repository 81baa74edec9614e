"""gru_torch.GRU: a drop-in for torch.nn.GRU with Keras's cells and recurrent dropout.

Same constructor, parameter names, state_dict, forward and errors as nn.GRU, plus
(keyword-only) `reset_after`, `recurrent_dropout`, `backend`, and `forward(..., lengths=)`.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from . import _checks, _ext, _inputs, backends, keras, ops
from .reference import gru_layer_reference


def draw_recurrent_mask(shape, rate: float, like: Tensor) -> Tensor:
    """A variational dropout mask, scaled by 1/(1 - rate); a rate of 1 drops everything
    (as dropout(p=1) gives zeros) rather than scaling by infinity."""
    keep = 1.0 - rate
    if keep == 0:
        return like.new_zeros(shape)
    return torch.bernoulli(like.new_full(shape, keep)) / keep


class GRU(nn.Module):
    """Multi-layer GRU. See torch.nn.GRU for the shared arguments.

    Extra keyword-only arguments:
      reset_after: True (nn.GRU, cuDNN, Keras 3) applies the reset gate after the
        recurrent product; False is the Cho (2014) / Keras 2 cell,
        n = tanh(W_in x + (r * h) W_hn^T + b_n), with one bias vector per layer and
        direction (`bias_ih_l{k}`), as Keras keeps it.
      recurrent_dropout: variational dropout on the recurrent state (Keras semantics):
        one mask per sequence and layer-direction, applied where h enters the recurrent
        product, in training only.
      backend: "auto" (fused op, else nn.GRU, else the reference loop), or one forced.
    `proj_size` is there only to be refused as nn.GRU refuses it (a ValueError).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True,
                 recurrent_dropout: float = 0.0, backend: str = "auto",
                 proj_size=_checks.NOT_GIVEN) -> None:
        super().__init__()
        dropout = _checks.check_gru_args(input_size, hidden_size, num_layers, bias, batch_first,
                                         dropout, bidirectional, proj_size, reset_after,
                                         recurrent_dropout, backend)
        # Stored as given, as nn.GRU stores them (its repr and arithmetic see the same values).
        self.mode = "GRU"
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = dropout
        self.proj_size = 0
        self.reset_after = reset_after
        self.recurrent_dropout = float(recurrent_dropout)
        self.backend = backend
        _ext.status()  # find (or JIT-build) the op now, not inside a traced forward
        factory = {"device": device, "dtype": dtype}
        H, G = hidden_size, 3 * hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []  # [layer * num_directions + direction] -> names
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H * self.num_directions
            for suffix in self._suffixes():
                names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                shapes = [(G, in_size), (G, H)]
                if bias:
                    names.append(f"bias_ih_l{layer}{suffix}")
                    if reset_after:  # reset_after=False keeps Keras's one bias
                        names.append(f"bias_hh_l{layer}{suffix}")
                    shapes += [(G,)] * (len(names) - 2)
                for name, shape in zip(names, shapes):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names += names
                self._all_weights.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"] if self.bidirectional else [""]

    def reset_parameters(self) -> None:
        """nn.GRU's initialization: every parameter uniform in +-1/sqrt(hidden_size)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Accepted for nn.GRU compatibility; the parameters need no flattening here."""

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """nn.GRU's flat list of the current weights (after any reparametrization, None
        for a deleted one), read fresh on every access."""
        return [getattr(self, n) if hasattr(self, n) else None for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        # nn.GRU's text for the shared arguments, then gru_torch's own where not default
        s = f"{self.input_size}, {self.hidden_size}"
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
        for name, default in (("reset_after", True), ("recurrent_dropout", 0.0),
                              ("backend", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # ---- parameters of one layer, stacked over directions, as the layer op takes them
    def _layer_params(self, layer: int):
        D = self.num_directions
        per_dir = [dict(zip(("w_ih", "w_hh", "b_ih", "b_hh"), (getattr(self, n) for n in names)))
                   for names in self._all_weights[layer * D:(layer + 1) * D]]

        def stack(key):
            if key not in per_dir[0]:
                return None
            ts = [p[key] for p in per_dir]
            return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)

        return stack("w_ih"), stack("w_hh"), stack("b_ih"), stack("b_hh")

    def _spec(self) -> _inputs.Spec:
        return _inputs.Spec(self.input_size, self.hidden_size, self.num_layers,
                            self.num_directions, self.batch_first, self.bias,
                            getattr(self, self._flat_weights_names[0]))

    def _choose_backend(self, call: _inputs.Call) -> str:
        cfg = backends.Config(call.x.device, call.x.dtype, self.reset_after,
                              self.training and self.recurrent_dropout > 0,
                              backends.active_transform(itertools.chain(
                                  (call.x, call.hx),
                                  (getattr(self, n) for n in self._flat_weights_names))))
        if not call.autocast_mixed:
            return backends.resolve(self.backend, cfg)
        why = backends.cudnn_reason(cfg)
        if why:
            weight_dtype = getattr(self, self._flat_weights_names[0]).dtype
            raise ValueError(f"{_checks.input_dtype_message(call.x.dtype, weight_dtype)} "
                             f"(under autocast gru_torch runs an input or hx of another dtype "
                             f"than the weights through nn.GRU's kernel, and {why})")
        return "cudnn"

    def forward(self, input, hx: Tensor | None = None, lengths: Tensor | None = None):
        try:
            call = _inputs.normalize(input, hx, lengths, self._spec())
        except _inputs.PackedDeviceError as e:
            raise self._nn_packed_error(input, hx, e) from None
        x, hx = call.x, call.hx
        if hx is None:
            hx = x.new_zeros(self.num_layers * self.num_directions, x.shape[1], self.hidden_size)
        backend = self._choose_backend(call)
        if backend == "cudnn":
            out, h_n = self._forward_nn_gru(x, hx, call.lengths)
        else:
            layer_fn = ops.gru_layer if backend == "fused" else gru_layer_reference
            out, h_n = self._forward_layers(layer_fn, x, hx, call.lengths)
        return call.restore.output(out), call.restore.hidden(h_n)

    def _nn_packed_error(self, packed, hx, error: RuntimeError) -> RuntimeError:
        """The error nn.GRU's kernel raises for this packed call (see PackedDeviceError),
        with gru_torch's detail; where that kernel has no such cell, or runs, only the detail."""
        if self.reset_after:
            data, batch_sizes, sorted_indices, _ = packed
            if hx is None:
                hx = data.new_zeros(self.num_layers * self.num_directions, int(batch_sizes[0]),
                                    self.hidden_size)
            elif sorted_indices is not None:
                hx = hx.index_select(1, sorted_indices)
            try:
                torch._VF.gru(data, batch_sizes, hx, self._flat_weights, self.bias,
                              self.num_layers, 0.0, False, self.bidirectional)
            except RuntimeError as nn_error:
                return RuntimeError(f"{nn_error} ({error})")
        return error

    def _recurrent_masks(self, B: int, like: Tensor) -> Tensor | None:
        if not (self.training and self.recurrent_dropout > 0):
            return None
        return draw_recurrent_mask((self.num_directions, B, self.hidden_size),
                              self.recurrent_dropout, like)

    def _forward_layers(self, layer_fn, x: Tensor, hx: Tensor, lengths: Tensor | None):
        D = self.num_directions
        lengths_dev = None if lengths is None else lengths.to(x.device)
        finals = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(layer)
            mask = self._recurrent_masks(x.shape[1], x)
            x, h_n = layer_fn(x, hx[layer * D:(layer + 1) * D], w_ih, w_hh, b_ih, b_hh, mask,
                              lengths_dev, self.reset_after)
            finals.append(h_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return x, torch.cat(finals)

    def _forward_nn_gru(self, x: Tensor, hx: Tensor, lengths: Tensor | None):
        args = (self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional)
        if lengths is None:
            out, h_n = torch._VF.gru(x, hx, *args, False)
            return out, h_n
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = hx.index_select(1, packed.sorted_indices.to(hx.device))
        out, h_n = torch._VF.gru(packed.data, packed.batch_sizes, hx, *args)
        out, _ = nn.utils.rnn.pad_packed_sequence(
            nn.utils.rnn.PackedSequence(out, packed.batch_sizes, packed.sorted_indices,
                                        packed.unsorted_indices), total_length=x.shape[0])
        return out, h_n.index_select(1, packed.unsorted_indices.to(h_n.device))

    # ---- conversions
    @classmethod
    def from_torch(cls, module: nn.GRU, **kwargs) -> "GRU":
        """A gru_torch.GRU with the same configuration and weights as `module`."""
        if not isinstance(module, nn.GRU):
            raise TypeError(f"from_torch expects a torch.nn.GRU, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError("from_torch: nn.GRU with proj_size is not supported")
        p = module.weight_ih_l0
        new = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
                  module.batch_first, float(module.dropout), module.bidirectional,
                  device=p.device, dtype=p.dtype, **kwargs)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def to_torch(self) -> nn.GRU:
        """An nn.GRU with the same configuration and weights."""
        if not self.reset_after:
            raise ValueError("to_torch: nn.GRU has no reset_after=False cell")
        if self.recurrent_dropout > 0:
            backends.warn_once("to_torch: nn.GRU has no recurrent dropout; the converted "
                               f"module drops recurrent_dropout={self.recurrent_dropout}")
        p = self.weight_ih_l0
        module = nn.GRU(self.input_size, self.hidden_size, self.num_layers, self.bias,
                        self.batch_first, self.dropout, self.bidirectional,
                        device=p.device, dtype=p.dtype)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    def load_keras_weights(self, weights, layer: int = 0, reverse: bool = False) -> None:
        """Loads what a Keras GRU layer's get_weights() returns (either cell) into one
        layer-direction, so that it computes what that Keras layer computes."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        if reverse and not self.bidirectional:
            raise ValueError("reverse=True needs a bidirectional GRU")
        names = self._all_weights[layer * self.num_directions + (1 if reverse else 0)]
        in_size = getattr(self, names[0]).shape[1]
        converted = keras.from_keras(weights, in_size, self.hidden_size, self.reset_after)
        with torch.no_grad():
            getattr(self, names[0]).copy_(converted["w_ih"])
            getattr(self, names[1]).copy_(converted["w_hh"])
            biases = dict(zip(("b_ih", "b_hh"), names[2:]))
            if converted.get("b_ih") is not None and not biases:
                raise ValueError("load_keras_weights: the Keras layer has a bias but this GRU "
                                 "was built with bias=False")
            for key, name in biases.items():
                value = converted.get(key)
                target = getattr(self, name)
                target.copy_(value) if value is not None else target.zero_()
