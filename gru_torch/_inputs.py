"""Normalizing a GRU call's arguments: layouts, packed input, lengths, checks.

Everything becomes time-major [T, B, I] with hx [L*D, B, H] and optional int64 lengths;
`Restore` puts the results back into the caller's layout. The checks follow nn.GRU's
forward step by step (see _checks.py), so a bad call fails as it would there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _checks


@dataclass
class Restore:
    """How to give the caller back results in the layout it passed in."""
    unbatched: bool = False
    batch_first: bool = False
    packed: PackedSequence | None = None
    lengths: Tensor | None = None  # CPU int64, for re-packing

    def output(self, out: Tensor):
        if self.packed is not None:
            p = self.packed
            if p.sorted_indices is not None:
                out = out.index_select(1, p.sorted_indices)
                lengths = self.lengths.index_select(0, p.sorted_indices.cpu())
            else:
                lengths = self.lengths
            data = pack_padded_sequence(out, lengths, enforce_sorted=True).data
            return PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        if self.unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def hidden(self, h_n: Tensor) -> Tensor:
        return h_n.squeeze(1) if self.unbatched else h_n


@dataclass(frozen=True)
class Spec:
    """What the checks need to know of the module."""
    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    batch_first: bool
    bias: bool
    weight: Tensor  # weight_ih_l0: where the parameters live and their dtype

    def expected_hidden(self, batch: int) -> tuple:
        # nn.GRU's arithmetic, so the message prints the same numbers
        return (self.num_layers * self.num_directions, batch, self.hidden_size)


@dataclass
class Call:
    """One normalized forward call."""
    x: Tensor                     # [T, B, I]
    hx: Tensor | None             # [L*D, B, H]
    lengths: Tensor | None        # CPU int64 [B]
    restore: Restore
    # Under autocast nn.GRU takes an input or state of another dtype than its weights
    # and lets its kernel cast; gru_torch then runs that kernel too.
    autocast_mixed: bool = False


def _check_lengths(lengths, T: int, B: int) -> Tensor:
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"lengths must be a 1-D integer tensor, got {type(lengths).__name__}") from e
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.numel() != B:
        raise ValueError(f"lengths must be 1-D with one entry per batch row ({B}), "
                         f"got shape {tuple(lengths.shape)}")
    lengths = lengths.to(device="cpu", dtype=torch.int64)
    if B and not torch.compiler.is_compiling() and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the input's time steps), got values "
                         f"in [{int(lengths.min())}, {int(lengths.max())}]")
    return lengths


def _without_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """x with zeros past each row's length. Packing drops those steps; the layer skips
    them too, but its weight gradient multiplies every row's input by a zero gradient,
    and 0 * NaN (or Inf) padding would be NaN."""
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    padding = steps >= lengths.to(x.device).unsqueeze(0)  # [T, B]
    return x.masked_fill(padding.unsqueeze(-1), 0)


def _check_input(input: Tensor, expected_dim: int, spec: Spec) -> None:
    """nn.RNNBase.check_input."""
    weight_dtype = spec.weight.dtype
    if input.dtype != weight_dtype and not torch._C._is_any_autocast_enabled():
        raise ValueError(_checks.input_dtype_message(input.dtype, weight_dtype))
    if input.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()} "
                           "(a PackedSequence's data is [sum of lengths, input_size])")
    if spec.input_size != input.size(-1):
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                           f"{spec.input_size}, got {input.size(-1)}")


def _check_hidden_size(hx, expected: tuple) -> None:
    """nn.RNNBase.check_hidden_size."""
    try:
        size = hx.size()
    except AttributeError as e:
        _checks.reraise(e, f"hx must be a Tensor, got {type(hx).__name__}")
    if size != expected:
        raise RuntimeError(f"Expected hidden size {expected}, got {list(size)} (hx must be "
                           "[num_layers * num_directions, batch, hidden_size])")


def _sorted_hx(hx, sorted_indices: Tensor, expected: tuple) -> Tensor:
    """hx in a PackedSequence's sorted row order, selected as nn.GRU selects it."""
    try:
        return hx.index_select(1, sorted_indices)
    except AttributeError as e:
        _checks.reraise(e, f"hx must be a Tensor, got {type(hx).__name__}")
    except (IndexError, RuntimeError) as e:
        _checks.reraise(e, f"hx must have shape {expected}, got {tuple(hx.shape)}")


class PackedDeviceError(RuntimeError):
    """A PackedSequence or hx on another device than the parameters. at::gru checks no
    devices for packed input: its first operation that mixes devices fails, with that
    operation's message, so the module asks nn.GRU's kernel for it (see GRU.forward)."""


def _check_packed_devices(data: Tensor, hx: Tensor | None, spec: Spec) -> None:
    for t, what in ((data, "the PackedSequence's data"), (hx, "hx")):
        if t is not None and t.device != spec.weight.device:
            raise PackedDeviceError(f"{what} is on {t.device}, but the GRU's parameters are "
                                    f"on {spec.weight.device}")


def _check_devices(x: Tensor, hx: Tensor | None, weight: Tensor) -> None:
    """The device checks of nn.GRU's kernel (at::gru)."""
    if x.device != weight.device:
        raise RuntimeError("Input and parameter tensors are not at the same device, found "
                           f"input tensor at {x.device} and parameter tensor at {weight.device}")
    if hx is not None and hx.device != x.device:
        raise RuntimeError("Input and hidden tensors are not at the same device, found input "
                           f"tensor at {x.device} and hidden tensor at {hx.device}")


def _normalize_packed(input: PackedSequence, hx, spec: Spec, restore: Restore):
    data, batch_sizes, sorted_indices, unsorted_indices = input
    expected = spec.expected_hidden(int(batch_sizes[0]))
    if hx is not None and sorted_indices is not None:
        hx = _sorted_hx(hx, sorted_indices, expected)
    _check_input(data, 2, spec)
    if hx is not None:
        _check_hidden_size(hx, expected)
    _check_packed_devices(data, hx, spec)
    x, lengths = pad_packed_sequence(input)  # [T, B, I] in the caller's row order
    if hx is not None and unsorted_indices is not None:
        hx = hx.index_select(1, unsorted_indices)
    restore.packed, restore.lengths = input, lengths
    return x, hx, lengths


def _normalize_padded(input, hx, spec: Spec, restore: Restore):
    dim = _checks.tensor_dim(input, "input (a Tensor or PackedSequence)")
    if dim not in (2, 3):
        raise ValueError(f"GRU: Expected input to be 2D or 3D, got {dim}D instead")
    batched = dim == 3
    if hx is not None:
        hx_dim = _checks.tensor_dim(hx, "hx")
        if not batched and hx_dim != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got "
                               f"{hx_dim}-D tensor")
        if batched and hx_dim != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got "
                               f"{hx_dim}-D tensor")
    batch_dim = 0 if spec.batch_first else 1
    if not batched:
        restore.unbatched = True
        input = input.unsqueeze(batch_dim)
        hx = None if hx is None else hx.unsqueeze(1)
    _check_input(input, 3, spec)
    if hx is not None:
        _check_hidden_size(hx, spec.expected_hidden(input.size(batch_dim)))
    x = input.transpose(0, 1) if spec.batch_first else input
    _check_devices(x, hx, spec.weight)
    if x.shape[0] == 0:
        raise RuntimeError(f"{_checks.EMPTY_SEQUENCE} (the input has no time steps)")
    return x, hx


def normalize(input, hx, lengths, spec: Spec) -> Call:
    """Checks a GRU call as nn.GRU does, then brings it to the op's layout."""
    restore = Restore(batch_first=spec.batch_first)
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths must not be given with a PackedSequence input "
                             "(the PackedSequence carries its own lengths)")
        x, hx, lengths = _normalize_packed(input, hx, spec, restore)
    else:
        x, hx = _normalize_padded(input, hx, spec, restore)
        if lengths is not None:
            lengths = _check_lengths(lengths, x.shape[0], x.shape[1])
            x = _without_padding(x, lengths)
    weight_dtype = spec.weight.dtype
    mixed = x.dtype != weight_dtype or (hx is not None and hx.dtype != weight_dtype)
    if mixed and not torch._C._is_any_autocast_enabled():
        # only hx can differ here: check_input has caught the input
        raise RuntimeError(f"{_checks.linear_error(hx, spec.weight, spec.bias)} (hx dtype "
                           f"{hx.dtype} does not match the GRU's parameters, {weight_dtype})")
    return Call(x, hx, lengths, restore, autocast_mixed=mixed)
