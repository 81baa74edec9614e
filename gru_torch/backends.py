"""Choosing how a recurrent layer runs: the fused op, torch.nn's kernel (nn.GRU, nn.LSTM,
nn.RNN: cuDNN on a GPU), or the reference loop.

"auto" tries them in that order; a fallback warns once, naming its reason. A forced
backend that cannot run raises an error saying why and how to get it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from . import _ext, ops
from .cellspec import Cell

BACKENDS = ("auto", "fused", "cudnn", "reference")

_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


@dataclass(frozen=True)
class Config:
    """What a forward call asks of the backend."""
    device: torch.device
    dtype: torch.dtype
    cell: Cell = Cell()
    dropout_active: bool = False     # recurrent or input dropout masks in this call
    transform: Transform | None = None
    masks: str = "shared"            # "shared" or "per_gate" (gru_torch.cellspec)
    input_dropout: bool = False      # Keras's `dropout` (masks on each layer's input)
    proj: bool = False               # an LSTM with projections
    directions: int = 1              # 2: bidirectional
    hidden: int = 0                  # the hidden size (0: not known)

    @property
    def nn_name(self) -> str:
        return "nn.RNN" if self.cell.kind == "rnn" else f"nn.{self.cell.kind.upper()}"


@dataclass(frozen=True)
class Transform:
    """A torch.func transform or forward-mode AD around the call."""
    reason: str
    fused_can_run: bool  # vmap alone: torch runs the op once per sample


def active_transform(tensors) -> Transform | None:
    """The autograd machinery around a call that the compiled op does not support, or
    None; `tensors` (any iterable) is read only where forward-mode AD is on.
    torch.library's autograd for the op is not usable under torch.func's grad, jvp and
    their kin, and the op has no forward-mode derivative; the reference loop, made of
    plain torch ops, supports them all (nn.GRU's kernel supports all but vmap).
    While torch.compile traces, the op goes into the graph and the compiler deals with
    any transform."""
    if torch.compiler.is_compiling():
        return None
    if torch._C._functorch.peek_interpreter_stack() is not None:
        kinds = {i.key() for i in retrieve_all_functorch_interpreters()}
        kinds.discard(TransformType.Functionalize)  # no derivatives: the op is functional
        if kinds:
            return Transform("a torch.func transform (grad, vmap, jvp, jacrev, hessian, ...) "
                             "is active", kinds == {TransformType.Vmap})
    if fwAD._current_level >= 0 and any(
            t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        return Transform("forward-mode AD (dual tensors) is active", False)
    return None


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def nn_reason(cfg: Config) -> str | None:
    """Why torch.nn's kernel cannot express cfg, or None when it can."""
    why = cfg.cell.nn_reason()
    if why:
        return why
    if cfg.dropout_active:
        return f"{cfg.nn_name} has no {'input' if cfg.input_dropout else 'recurrent'} dropout"
    return None


def fused_reason(cfg: Config) -> str | None:
    """Why the fused op cannot run cfg, or None when it can."""
    cell_why = ops.cell_reason(cfg.cell, cfg.dropout_active, cfg.masks, cfg.input_dropout,
                               cfg.proj, cfg.directions, cfg.device)
    if cfg.device.type == "meta" and _ext.status().loaded:
        return cell_why  # meta tensors carry shapes only: the op's fake kernel gives any dtype's
    why = ops.unsupported_reason(cfg.device, cfg.dtype) or cell_why
    if why is None and cfg.hidden:
        why = ops.device_family_reason(cfg.cell, cfg.dropout_active, cfg.masks,
                                       cfg.input_dropout, cfg.directions, cfg.device,
                                       cfg.dtype, cfg.hidden)
    return why


def _fallback(cfg: Config, cudnn_why: str | None) -> str:
    return "cudnn" if cudnn_why is None else "reference"


def resolve(requested: str, cfg: Config) -> str:
    """The backend that will run cfg: "fused", "cudnn" (torch.nn's kernel) or "reference".

    On a GPU (and on CPU tensors under gru_torch.testing.emulate_cuda, which stands in
    for one), "auto" picks cuDNN wherever torch.nn can express the configuration and the
    fused kernel where it cannot (reset_after=False, hard sigmoids, dropout in training),
    until GPU timings say otherwise. The first fused use per device, dtype and cell
    runs a self-check against the reference; a kernel that fails it is not used: the
    process warns once, naming the mismatch, and falls back."""
    if cfg.device.type == "meta" and requested in ("auto", "fused") and fused_reason(cfg) is None:
        return "fused"
    if cfg.transform:
        if requested == "fused" and not cfg.transform.fused_can_run:
            raise RuntimeError(f"gru_torch: backend='fused' cannot run: {cfg.transform.reason}, "
                               "which the compiled op does not support; use backend='auto' or "
                               "'reference'")
        if requested == "auto":
            warn_once(f"gru_torch: running the reference loop because {cfg.transform.reason}")
            return "reference"
    fused_why = fused_reason(cfg)
    cudnn_why = nn_reason(cfg)
    gpu_policy = cfg.device.type == "cuda" or ops.emulating(cfg.device)
    wants_fused = requested == "fused" or (requested == "auto" and (not gpu_policy or cudnn_why))
    if fused_why is None and wants_fused:
        failed = ops.self_check_failure(cfg.device, cfg.dtype, cfg.cell)
        if failed:
            fallback = _fallback(cfg, cudnn_why)
            warn_once(f"gru_torch: the fused CUDA kernel failed its self-check on {cfg.device} "
                      f"({str(cfg.dtype).replace('torch.', '')}, {cfg.cell.describe()}): "
                      f"{failed}; using the {cfg.nn_name if fallback == 'cudnn' else 'reference'} "
                      "backend instead")
            return fallback
    if requested == "fused":
        if fused_why:
            hint = _ext.HOW_TO_BUILD if not _ext.status().loaded else "use backend='auto'"
            raise RuntimeError(f"gru_torch: backend='fused' cannot run: {fused_why}. {hint}")
        return "fused"
    if requested == "cudnn":
        if cudnn_why:
            raise RuntimeError(f"gru_torch: backend='cudnn' cannot run: {cudnn_why}; "
                               "use backend='fused' or 'reference'")
        return "cudnn"
    if requested == "reference":
        return "reference"
    if gpu_policy and cudnn_why is None:
        return "cudnn"
    if fused_why is None:
        return "fused"
    if cudnn_why is None:
        warn_once(f"gru_torch: falling back to {cfg.nn_name} because {fused_why}")
        return "cudnn"
    warn_once(f"gru_torch: falling back to the slow reference loop because {fused_why} "
              f"and {cudnn_why}")
    return "reference"
