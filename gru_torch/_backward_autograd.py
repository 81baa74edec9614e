"""Autograd for the compiled backward op, so that the fused layer differentiates twice.

`gru_layer_backward` computes the layer's gradients g = J(theta)^T v, with theta the
layer's inputs and weights and v the gradients of its outputs. Differentiating g (for
backward(create_graph=True): double backward, gradient penalties, Hessian-vector
products, meta-learning) needs the derivative of that product, which the compiled kernel
does not provide: it writes into preallocated buffers. This formula rebuilds g with the
reference loop (the same math in differentiable torch ops) and lets autograd take the
derivative. It is itself differentiable when grad mode is on, so every order works.
Only calls that ask for derivatives beyond the first pay for it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .reference import gru_layer_reference

# gru_layer_backward's inputs: grad_output, grad_h_n, then the layer's six tensors
# (input, hx, w_ih, w_hh, b_ih, b_hh), mask, lengths, reset_after, reserve, output (the
# last two functions of the layer's tensors, not independent inputs: no gradient).
_N_INPUTS = 13
_LAYER_TENSORS = slice(2, 8)


def setup_context(ctx, inputs, output) -> None:
    grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after = inputs[:11]
    ctx.reset_after = reset_after
    ctx.save_for_backward(grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths)


def _independent(t: Tensor) -> Tensor:
    """A variable standing for t that autograd can differentiate with respect to alone.
    Where autograd tracks t, a view of it: the derivatives reach t's history (so higher
    orders work), but none leaks along that history into another input (grad_output
    usually depends on the weights through the forward output, and its partial
    derivatives must hold the weights fixed). Elsewhere, a fresh leaf."""
    return t.view_as(t) if t.requires_grad else t.detach().requires_grad_()


def backward(ctx, *cotangents):
    """cotangents: one per output of gru_layer_backward (d_input, d_hx, d_w_ih, d_w_hh,
    d_b_ih, d_b_hh), None where unused."""
    saved = ctx.saved_tensors
    mask, lengths = saved[8], saved[9]
    create_graph = torch.is_grad_enabled()
    result: list[Tensor | None] = [None] * _N_INPUTS
    with torch.enable_grad():
        tensors = [None if t is None else _independent(t) for t in saved[:8]]
        grad_output, grad_h_n = tensors[:2]
        layer = tensors[_LAYER_TENSORS]
        out, h_n = gru_layer_reference(*layer, mask, lengths, ctx.reset_after)
        present = [i for i, t in enumerate(layer) if t is not None]
        # The op returns bias gradients even for a layer without biases; nothing reads them.
        first = torch.autograd.grad((out, h_n), [layer[i] for i in present],
                                    (grad_output, grad_h_n), create_graph=True,
                                    allow_unused=True)
        pairs = [(g, cotangents[i]) for i, g in zip(present, first)
                 if g is not None and cotangents[i] is not None]
        wanted = [i for i in range(8) if tensors[i] is not None and ctx.needs_input_grad[i]]
        if not pairs or not wanted:
            return tuple(result)
        grads = torch.autograd.grad([g for g, _ in pairs], [tensors[i] for i in wanted],
                                    [c for _, c in pairs], create_graph=create_graph,
                                    allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(saved[i]) if g is None else g
    return tuple(result)
