"""gru_torch.GRUCell, LSTMCell and RNNCell: drop-ins for torch.nn's cells, one step
through the family's layer op.

Same constructor, parameter names, state_dict, forward and errors as nn.GRUCell,
nn.LSTMCell and nn.RNNCell, plus (keyword-only) the family's own arguments
(`recurrent_activation`, `reset_after`, `single_bias`, `recurrent_dropout`,
`dropout_masks`, `backend`) and `forward(..., recurrent_mask=)`. A step runs as the
layer op over one time step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _checks, _ext, backends, keras_weights, ops
from .cellspec import Cell, GRUOptions, LSTMOptions, mask_width
from .reference import rnn_layer_reference
from .rnn_base import draw_mask

_NN_CELL_KERNELS = {"GRU": "gru_cell", "LSTM": "lstm_cell", "RNN_TANH": "rnn_tanh_cell",
                    "RNN_RELU": "rnn_relu_cell"}


class RNNCellBase(nn.Module):
    """The shared part of gru_torch.GRUCell, LSTMCell and RNNCell."""

    __constants__ = ["input_size", "hidden_size", "bias"]
    _name = "RNNCell"
    _nn_class: type = nn.RNNCellBase

    def __init__(self, input_size: int, hidden_size: int, bias: bool, device, dtype, *,
                 single_bias: bool, recurrent_dropout: float, dropout_masks: str,
                 backend: str) -> None:
        super().__init__()
        _checks.check_extras(recurrent_dropout, 0.0, dropout_masks, backend,
                             **self._own_checks(single_bias))
        factory = {"device": device, "dtype": dtype}
        # Stored and used as given, as nn's cells do: torch.empty then rejects the sizes
        # nn rejects, with the same errors.
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.single_bias = single_bias
        self.recurrent_dropout = float(recurrent_dropout)
        self.dropout_masks = dropout_masks
        self.backend = backend
        _ext.status()  # find (or JIT-build) the op now, not inside a traced forward
        G = self.cell.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((G, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((G, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            if self._two_biases:
                self.bias_hh = nn.Parameter(torch.empty(G, **factory))
            else:  # Keras's single bias
                self.register_parameter("bias_hh", None)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    # ---- what the subclasses say
    @property
    def cell(self) -> Cell:
        raise NotImplementedError

    @property
    def _two_biases(self) -> bool:
        return not self.single_bias

    def _own_checks(self, single_bias) -> dict:
        return {"single_bias": single_bias}

    def _own_options(self) -> list[tuple[str, object]]:
        return [("single_bias", False), ("recurrent_dropout", 0.0), ("dropout_masks", "shared"),
                ("backend", "auto")]

    # ---- nn's cell
    def reset_parameters(self) -> None:
        """nn's initialization: every parameter uniform in +-1/sqrt(hidden_size)."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def extra_repr(self) -> str:
        # nn's text for the shared arguments, then gru_torch's own where not default
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        for name, default in self._own_options():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def recurrent_dropout_mask(self, batch_size: int | None = None) -> Tensor:
        """A mask for `forward(..., recurrent_mask=)`, drawn with this cell's
        recurrent_dropout and scaled by 1/(1 - recurrent_dropout): [batch_size, H], or [H]
        for unbatched input (batch_size None); with dropout_masks="per_gate", one per
        gate: [batch_size, gates, H] or [gates, H]. Reuse it for every step of a sequence."""
        M = mask_width(self.dropout_masks, self.cell)
        shape = (self.hidden_size,) if M == 1 else (M, self.hidden_size)
        shape = shape if batch_size is None else (batch_size, *shape)
        return draw_mask(shape, self.recurrent_dropout, self.weight_hh)

    # ---- forward
    def _check_before_step(self) -> None:
        """A cell's own check after the inputs' (RNNCell's nonlinearity, in nn's order)."""

    def _forward(self, input: Tensor, hx: Tensor, cx: Tensor | None,
                 recurrent_mask: Tensor | None, batched: bool):
        """One step from batched (h, c) (c None but for an LSTM): (h', c')."""
        nn_kernel_only = self._check_step(input, hx, cx)
        mask = self._step_mask(recurrent_mask, hx, batched)
        if nn_kernel_only:
            if mask is not None:
                raise ValueError(f"recurrent dropout needs input and hx on the {self._name}'s "
                                 f"device and dtype (nn.{self._name}'s kernel, which takes "
                                 "others, has none)")
            return self._nn_step(input, hx, cx)
        return self._step(input, hx, cx, mask)

    def _check_step(self, input: Tensor, hx: Tensor, cx: Tensor | None) -> bool:
        """The checks of nn's cell kernel (at::gru_cell, lstm_cell, rnn_*_cell), in its
        order. True where only that kernel can give nn's outcome: tensors on other devices
        than the weights, whose first mixing operation fails (or, on the meta device, may
        not) in the kernel's own way, and, under autocast, other dtypes, which it casts."""
        if input.size(1) != self.weight_ih.size(1):
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.weight_ih.size(1)}")
        states = [hx] if cx is None else [hx, cx]
        for label, state in enumerate(states):
            if input.size(0) != state.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden"
                                   f"{label} batch size {state.size(0)} (hx must be [batch, "
                                   "hidden_size], or [hidden_size] for 1-D input)")
            try:
                width = state.size(1)
            except IndexError as e:
                _checks.reraise(e, f"hx must be 2-D [batch, hidden_size] for 2-D input, got "
                                   f"shape {tuple(state.shape)}")
            if width != self.weight_hh.size(1):
                raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {width}, "
                                   f"expected {self.weight_hh.size(1)}")
            if state.dim() != input.dim():  # what passes the checks above and still is not a state
                raise RuntimeError(f"hx must be 1-D [hidden_size] for 1-D input, got shape "
                                   f"{tuple(state.shape[1:])}")
        pairs = [(input, self.weight_ih, self.bias_ih)] + [(s, self.weight_hh, self.bias_hh)
                                                            for s in states]
        elsewhere = any(x.device != w.device for x, w, _ in pairs)
        cast = torch._C._is_any_autocast_enabled() and any(x.dtype != w.dtype for x, w, _ in pairs)
        # c meets no weight in nn's LSTM cell: its dtype is the kernel's to promote or refuse
        c_cast = cx is not None and cx.dtype != self.weight_hh.dtype
        nn_why = self.cell.nn_reason()
        if (elsewhere or cast or c_cast) and nn_why is None and self._two_biases:
            return True
        if cast and not elsewhere:
            raise ValueError(f"under autocast gru_torch runs an input or hx of another dtype than "
                             f"the weights through nn.{self._name}'s kernel, which "
                             f"{'cannot run this cell: ' + nn_why if nn_why else 'takes two biases'}")
        for x, weight, b in pairs:
            message = _checks.linear_error(x, weight, b is not None)
            if message:
                raise RuntimeError(f"{message} (input and hx must have the {self._name}'s "
                                   f"dtype, {weight.dtype}, and device, {weight.device})")
        return False

    def _step_mask(self, given: Tensor | None, hx: Tensor, batched: bool) -> Tensor | None:
        """The step's recurrent mask, [B, M, H]. `self.training` is read only where a mask
        could apply, so a cell without dropout runs alike in train and eval."""
        if given is not None:
            if not isinstance(given, Tensor):
                raise TypeError(f"recurrent_mask must be a Tensor, got {type(given).__name__}")
            M = mask_width(self.dropout_masks, self.cell)
            state = tuple(hx.shape) if batched else tuple(hx.shape[1:])
            want = state if M == 1 else (*state[:-1], M, state[-1])
            if tuple(given.shape) != want:
                raise ValueError(f"recurrent_mask must have the state's shape {want}"
                                 f"{'' if M == 1 else ' (one per gate)'}, got {tuple(given.shape)}")
            given = given if batched else given.unsqueeze(0)
            given = given.unsqueeze(1) if M == 1 else given
            return given.to(hx.dtype) if self.training else None
        if self.recurrent_dropout > 0 and self.training:
            M = mask_width(self.dropout_masks, self.cell)
            return draw_mask((hx.shape[0], M, hx.shape[1]), self.recurrent_dropout, hx)
        return None

    def _nn_step(self, input: Tensor, hx: Tensor, cx: Tensor | None):
        kernel = getattr(torch._VF, _NN_CELL_KERNELS[self.cell.nn_mode])
        if cx is None:
            return kernel(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh), None
        return kernel(input, (hx, cx), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def _step(self, input: Tensor, hx: Tensor, cx: Tensor | None, mask: Tensor | None):
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        if self.hidden_size == 0:
            backend = "reference"  # an empty state: nothing for a kernel to compute
        else:
            masks = self.dropout_masks if mask is not None and mask.shape[1] > 1 else "shared"
            cfg = backends.Config(input.device, input.dtype, self.cell, mask is not None,
                                  backends.active_transform([input, hx, cx, w_ih, w_hh, b_ih, b_hh]),
                                  masks, hidden=self.hidden_size)
            backend = backends.resolve(self.backend, cfg)
        if backend == "cudnn":
            if not self._two_biases and b_ih is not None:
                b_hh = torch.zeros_like(b_ih)
            kernel = getattr(torch._VF, _NN_CELL_KERNELS[self.cell.nn_mode])
            if cx is None:
                return kernel(input, hx, w_ih, w_hh, b_ih, b_hh), None
            return kernel(input, (hx, cx), w_ih, w_hh, b_ih, b_hh)
        layer_fn = ops.rnn_layer if backend == "fused" else rnn_layer_reference

        def one(t):  # a layer op's leading axis: one time step or one direction
            return None if t is None else t.unsqueeze(0)

        _, h_n, c_n = layer_fn(self.cell, input.unsqueeze(0), hx.unsqueeze(0), one(cx), one(w_ih),
                               one(w_hh), one(b_ih), one(b_hh), None, None, one(mask), None)
        return h_n[0], (None if c_n is None else c_n[0])

    # ---- conversions
    def _nn_kwargs(self) -> dict:
        return {}

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs):
        """A gru_torch cell with the same configuration and weights as `module`."""
        if not isinstance(module, cls._nn_class):
            raise TypeError(f"from_torch expects a torch.nn.{cls._nn_class.__name__}, got "
                            f"{type(module).__name__}")
        p = module.weight_ih
        extra = {"nonlinearity": module.nonlinearity} if hasattr(module, "nonlinearity") else {}
        new = cls(module.input_size, module.hidden_size, module.bias, device=p.device,
                  dtype=p.dtype, **extra, **kwargs)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def to_torch(self) -> nn.Module:
        """The torch.nn cell with the same configuration and weights."""
        why = self.cell.nn_reason()
        if why:
            raise ValueError(f"to_torch: {why.replace(f'nn.{self._name[:-4]}', f'nn.{self._name}')}")
        if self.recurrent_dropout > 0:
            backends.warn_once(f"to_torch: nn.{self._name} has no recurrent dropout; the "
                               f"converted module drops recurrent_dropout={self.recurrent_dropout}")
        p = self.weight_ih
        module = self._nn_class(self.input_size, self.hidden_size, self.bias, device=p.device,
                                dtype=p.dtype, **self._nn_kwargs())
        state = self.state_dict()
        if self.bias and not self._two_biases:
            state["bias_hh"] = torch.zeros_like(state["bias_ih"])
        module.load_state_dict(state)
        return module.train(self.training)

    def load_keras_weights(self, weights) -> None:
        """Loads what a Keras cell's (or one-layer layer's) get_weights() returns, so that
        this cell computes what that Keras cell computes."""
        converted = keras_weights.convert_weights(weights, self.cell, self.input_size,
                                                  self.hidden_size)
        keras_weights.copy_into(self, ["weight_ih", "weight_hh", "bias_ih", "bias_hh"],
                                converted, self._name)


def _one_state_forward(cell: RNNCellBase, name: str, input: Tensor, hx: Tensor | None,
                       recurrent_mask: Tensor | None) -> Tensor:
    """GRUCell's and RNNCell's forward: nn's checks in nn's order, then one step."""
    batched = _as_batch(input, name)
    if hx is not None:
        hx_dim = _checks.tensor_dim(hx, "hx")
        if hx_dim not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx_dim}D instead")
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = torch.zeros(input.size(0), cell.hidden_size, dtype=input.dtype, device=input.device)
    elif not batched:
        hx = hx.unsqueeze(0)
    cell._check_before_step()
    h, _ = cell._forward(input, hx, None, recurrent_mask, batched)
    return h if batched else h.squeeze(0)


def _as_batch(input: Tensor, name: str) -> bool:
    dim = _checks.tensor_dim(input, "input")
    if dim not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {dim}D instead")
    return dim == 2


class GRUCell(GRUOptions, RNNCellBase):
    """One GRU step. See torch.nn.GRUCell for the shared arguments.

    Extra keyword-only arguments:
      reset_after: True (nn.GRUCell) or False (the Cho (2014) / Keras 2 cell, with one
        bias vector, `bias_ih`; `bias_hh` is then None).
      recurrent_activation: as gru_torch.GRU's.
      recurrent_dropout: variational dropout on the state where it enters the recurrent
        product, in training only. A cell sees one step, so it cannot keep one mask per
        sequence by itself: pass the same `recurrent_mask` (from
        `recurrent_dropout_mask(batch)`) to every step of a sequence to get Keras's
        semantics, or none to draw a fresh mask on every call.
      dropout_masks: "shared" or "per_gate", as gru_torch.GRU's.
      backend: "auto" (fused op, else nn.GRUCell's kernel, else the reference), or one
        forced, as for gru_torch.GRU.
    """

    _name = "GRUCell"
    _nn_class = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, reset_after: bool = True, recurrent_activation: str = "sigmoid",
                 recurrent_dropout: float = 0.0, dropout_masks: str = "shared",
                 backend: str = "auto") -> None:
        self.reset_after = reset_after
        self.recurrent_activation = recurrent_activation
        super().__init__(input_size, hidden_size, bias, device, dtype, single_bias=False,
                         recurrent_dropout=recurrent_dropout, dropout_masks=dropout_masks,
                         backend=backend)

    def forward(self, input: Tensor, hx: Tensor | None = None,
                recurrent_mask: Tensor | None = None) -> Tensor:
        return _one_state_forward(self, "GRUCell", input, hx, recurrent_mask)


class LSTMCell(LSTMOptions, RNNCellBase):
    """One LSTM step, (h', c') from (h, c). See torch.nn.LSTMCell for the shared arguments;
    the extra keyword-only ones are gru_torch.LSTM's and GRUCell's (`recurrent_mask=`)."""

    _name = "LSTMCell"
    _nn_class = nn.LSTMCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, recurrent_activation: str = "sigmoid", single_bias: bool = False,
                 recurrent_dropout: float = 0.0, dropout_masks: str = "shared",
                 backend: str = "auto") -> None:
        self.recurrent_activation = recurrent_activation
        super().__init__(input_size, hidden_size, bias, device, dtype, single_bias=single_bias,
                         recurrent_dropout=recurrent_dropout, dropout_masks=dropout_masks,
                         backend=backend)

    def forward(self, input: Tensor, hx=None, recurrent_mask: Tensor | None = None):
        batched = _as_batch(input, "LSTMCell")
        if hx is not None:
            for idx, value in enumerate(hx):
                dim = _checks.tensor_dim(value, f"hx[{idx}]")
                if dim not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {dim}D "
                                     "instead")
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            hx = (zeros, zeros)
        elif not batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        elif not isinstance(hx, (tuple, list)):  # nn hands it to its kernel, which refuses it
            try:
                torch._VF.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                    self.bias_hh)
            except TypeError as e:
                _checks.reraise(e, "hx must be a tuple (h, c) of tensors")
        if len(hx) != 2:
            raise RuntimeError(f"lstm_cell expects two hidden states (got {len(hx)})")
        h, c = self._forward(input, hx[0], hx[1], recurrent_mask, batched)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class RNNCell(RNNCellBase):
    """One Elman RNN step, tanh or relu. See torch.nn.RNNCell for the shared arguments;
    the extra keyword-only ones are gru_torch.RNN's and GRUCell's (`recurrent_mask=`)."""

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]
    _name = "RNNCell"
    _nn_class = nn.RNNCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None, *,
                 single_bias: bool = False, recurrent_dropout: float = 0.0,
                 dropout_masks: str = "shared", backend: str = "auto") -> None:
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype, single_bias=single_bias,
                         recurrent_dropout=recurrent_dropout, dropout_masks=dropout_masks,
                         backend=backend)

    @property
    def cell(self) -> Cell:
        # nn.RNNCell takes any nonlinearity and fails in forward; so does this cell
        return Cell("rnn", activation=self.nonlinearity if self.nonlinearity == "relu" else "tanh")

    def _nn_kwargs(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    def forward(self, input: Tensor, hx: Tensor | None = None,
                recurrent_mask: Tensor | None = None) -> Tensor:
        return _one_state_forward(self, "RNNCell", input, hx, recurrent_mask)

    def _check_before_step(self) -> None:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
