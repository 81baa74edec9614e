"""gru_torch.GRUCell: a drop-in for torch.nn.GRUCell, one step through the fused op.

Same constructor, parameter names, state_dict, forward and errors as nn.GRUCell, plus
(keyword-only) `reset_after`, `recurrent_dropout` and `backend`, and
`forward(..., recurrent_mask=)`. A step runs as the fused layer op over one time step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _checks, _ext, backends, keras, ops
from .gru import draw_recurrent_mask
from .reference import gru_layer_reference


class GRUCell(nn.Module):
    """One GRU step. See torch.nn.GRUCell for the shared arguments.

    Extra keyword-only arguments:
      reset_after: True (nn.GRUCell) or False (the Cho (2014) / Keras 2 cell, with one
        bias vector, `bias_ih`; `bias_hh` is then None).
      recurrent_dropout: variational dropout on the state where it enters the recurrent
        product, in training only. A cell sees one step, so it cannot keep one mask per
        sequence by itself: pass the same `recurrent_mask` (from
        `recurrent_dropout_mask(batch)`) to every step of a sequence to get Keras's
        semantics, or none to draw a fresh mask on every call.
      backend: "auto" (fused op, else nn.GRUCell's kernel, else the reference), or one
        forced, as for gru_torch.GRU.
    """

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, reset_after: bool = True, recurrent_dropout: float = 0.0,
                 backend: str = "auto") -> None:
        super().__init__()
        _checks.check_cell_extras(reset_after, recurrent_dropout, backend)
        factory = {"device": device, "dtype": dtype}
        # Stored and used as given, as nn.GRUCell does: torch.empty then rejects the sizes
        # nn.GRUCell rejects, with the same errors.
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.reset_after = reset_after
        self.recurrent_dropout = float(recurrent_dropout)
        self.backend = backend
        _ext.status()  # find (or JIT-build) the op now, not inside a traced forward
        G = 3 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((G, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((G, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            if reset_after:
                self.bias_hh = nn.Parameter(torch.empty(G, **factory))
            else:  # Keras's single bias
                self.register_parameter("bias_hh", None)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.GRUCell's initialization: every parameter uniform in +-1/sqrt(hidden_size)."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def extra_repr(self) -> str:
        # nn.GRUCell's text for the shared arguments, then gru_torch's own where not default
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        for name, default in (("reset_after", True), ("recurrent_dropout", 0.0),
                              ("backend", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def recurrent_dropout_mask(self, batch_size: int | None = None) -> Tensor:
        """A mask for `forward(..., recurrent_mask=)`, drawn with this cell's
        recurrent_dropout and scaled by 1/(1 - recurrent_dropout): [batch_size, H], or [H]
        for unbatched input (batch_size None). Reuse it for every step of a sequence."""
        shape = (self.hidden_size,) if batch_size is None else (batch_size, self.hidden_size)
        return draw_recurrent_mask(shape, self.recurrent_dropout, self.weight_hh)

    # ---------------------------------------------------------------- forward
    def forward(self, input: Tensor, hx: Tensor | None = None,
                recurrent_mask: Tensor | None = None) -> Tensor:
        dim = _checks.tensor_dim(input, "input")
        if dim not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {dim}D instead")
        if hx is not None:
            hx_dim = _checks.tensor_dim(hx, "hx")
            if hx_dim not in (1, 2):
                raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx_dim}D instead")
        batched = dim == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                             device=input.device)
        elif not batched:
            hx = hx.unsqueeze(0)
        nn_kernel_only = self._check_step(input, hx)
        mask = self._step_mask(recurrent_mask, hx, batched)
        if nn_kernel_only:
            if mask is not None:
                raise ValueError("recurrent dropout needs input and hx on the GRUCell's device "
                                 "and dtype (nn.GRUCell's kernel, which takes others, has none)")
            h = torch._VF.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                   self.bias_hh)
        else:
            h = self._step(input, hx, mask)
        return h if batched else h.squeeze(0)

    def _check_step(self, input: Tensor, hx: Tensor) -> bool:
        """The checks of nn.GRUCell's kernel (at::gru_cell), in its order. True where only
        that kernel can give nn.GRUCell's outcome: tensors on other devices than the
        weights, whose first mixing operation fails (or, on the meta device, may not) in
        the kernel's own way, and, under autocast, other dtypes, which the kernel casts."""
        if input.size(1) != self.weight_ih.size(1):
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.weight_ih.size(1)}")
        if input.size(0) != hx.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden0 "
                               f"batch size {hx.size(0)} (hx must be [batch, hidden_size], "
                               "or [hidden_size] for 1-D input)")
        try:
            hx_width = hx.size(1)
        except IndexError as e:
            _checks.reraise(e, f"hx must be 2-D [batch, hidden_size] for 2-D input, got "
                               f"shape {tuple(hx.shape)}")
        if hx_width != self.weight_hh.size(1):
            raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx_width}, "
                               f"expected {self.weight_hh.size(1)}")
        if hx.dim() != input.dim():  # what passes the checks above and still is not a state
            raise RuntimeError(f"hx must be 1-D [hidden_size] for 1-D input, got shape "
                               f"{tuple(hx.shape[1:])}")
        pairs = ((input, self.weight_ih, self.bias_ih), (hx, self.weight_hh, self.bias_hh))
        elsewhere = any(x.device != w.device for x, w, _ in pairs)
        cast = torch._C._is_any_autocast_enabled() and any(x.dtype != w.dtype for x, w, _ in pairs)
        if (elsewhere or cast) and self.reset_after:
            return True
        if cast and not elsewhere:
            raise ValueError("under autocast gru_torch runs an input or hx of another dtype than "
                             "the weights through nn.GRUCell's kernel, which has no "
                             "reset_after=False cell")
        for x, weight, b in pairs:
            message = _checks.linear_error(x, weight, b is not None)
            if message:
                raise RuntimeError(f"{message} (input and hx must have the GRUCell's "
                                   f"dtype, {weight.dtype}, and device, {weight.device})")
        return False

    def _step_mask(self, given: Tensor | None, hx: Tensor, batched: bool) -> Tensor | None:
        if given is not None:
            if not isinstance(given, Tensor):
                raise TypeError(f"recurrent_mask must be a Tensor, got {type(given).__name__}")
            want = tuple(hx.shape) if batched else tuple(hx.shape[1:])
            if tuple(given.shape) != want:
                raise ValueError(f"recurrent_mask must have the state's shape {want}, got "
                                 f"{tuple(given.shape)}")
            given = given if batched else given.unsqueeze(0)
            return given.to(hx.dtype) if self.training else None
        if self.training and self.recurrent_dropout > 0:
            return draw_recurrent_mask(tuple(hx.shape), self.recurrent_dropout, hx)
        return None

    def _step(self, input: Tensor, hx: Tensor, mask: Tensor | None) -> Tensor:
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        cfg = backends.Config(input.device, input.dtype, self.reset_after, mask is not None,
                              backends.active_transform([input, hx, w_ih, w_hh, b_ih, b_hh]))
        if self.hidden_size == 0:
            backend = "reference"  # an empty state: nothing for a kernel to compute
        else:
            backend = backends.resolve(self.backend, cfg)
        if backend == "cudnn":
            return torch._VF.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
        layer_fn = ops.gru_layer if backend == "fused" else gru_layer_reference

        def one(t):  # a layer op's leading axis: one time step or one direction
            return None if t is None else t.unsqueeze(0)

        _, h_n = layer_fn(input.unsqueeze(0), hx.unsqueeze(0), one(w_ih), one(w_hh), one(b_ih),
                          one(b_hh), one(mask), None, self.reset_after)
        return h_n[0]

    # ---------------------------------------------------------------- conversions
    @classmethod
    def from_torch(cls, module: nn.GRUCell, **kwargs) -> "GRUCell":
        """A gru_torch.GRUCell with the same configuration and weights as `module`."""
        if not isinstance(module, nn.GRUCell):
            raise TypeError(f"from_torch expects a torch.nn.GRUCell, got {type(module).__name__}")
        p = module.weight_ih
        new = cls(module.input_size, module.hidden_size, module.bias, device=p.device,
                  dtype=p.dtype, **kwargs)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def to_torch(self) -> nn.GRUCell:
        """An nn.GRUCell with the same configuration and weights."""
        if not self.reset_after:
            raise ValueError("to_torch: nn.GRUCell has no reset_after=False cell")
        if self.recurrent_dropout > 0:
            backends.warn_once("to_torch: nn.GRUCell has no recurrent dropout; the converted "
                               f"module drops recurrent_dropout={self.recurrent_dropout}")
        p = self.weight_ih
        module = nn.GRUCell(self.input_size, self.hidden_size, self.bias, device=p.device,
                            dtype=p.dtype)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    def load_keras_weights(self, weights) -> None:
        """Loads what a Keras GRUCell's (or one-layer GRU's) get_weights() returns, either
        cell, so that this cell computes what that Keras cell computes."""
        converted = keras.from_keras(weights, self.input_size, self.hidden_size, self.reset_after)
        if converted["b_ih"] is not None and self.bias_ih is None:
            raise ValueError("load_keras_weights: the Keras cell has a bias but this GRUCell "
                             "was built with bias=False")
        with torch.no_grad():
            self.weight_ih.copy_(converted["w_ih"])
            self.weight_hh.copy_(converted["w_hh"])
            for key, target in (("b_ih", self.bias_ih), ("b_hh", self.bias_hh)):
                if target is not None:
                    value = converted[key]
                    target.copy_(value) if value is not None else target.zero_()
