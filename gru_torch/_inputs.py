"""Normalizing a recurrent layer's call: layouts, packed input, lengths, checks.

Everything becomes time-major [T, B, I] with hx [L*D, B, P] (and, for an LSTM, cx
[L*D, B, H]) and optional int64 lengths; `Restore` puts the results back into the
caller's layout. The checks follow nn.GRU's, nn.LSTM's and nn.RNN's forward step by step
(see _checks.py), so a bad call fails as it would there.
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

    def hidden(self, h_n):
        """h_n, or an LSTM's (h_n, c_n)."""
        if isinstance(h_n, tuple):
            return tuple(self.hidden(h) for h in h_n)
        return h_n.squeeze(1) if self.unbatched else h_n


@dataclass(frozen=True)
class Spec:
    """What the checks need to know of the module."""
    input_size: int
    hidden_size: int     # h's size: proj_size for an LSTM with projections
    num_layers: int
    num_directions: int
    batch_first: bool
    bias: bool
    weight: Tensor  # weight_ih_l0: where the parameters live and their dtype
    name: str = "GRU"            # "GRU", "LSTM" or "RNN": the module's, for messages
    cell_size: int | None = None  # an LSTM's c size (its hidden_size); None without c

    @property
    def has_c(self) -> bool:
        return self.cell_size is not None

    def expected_hidden(self, batch: int, size: int | None = None) -> tuple:
        # nn's arithmetic, so the message prints the same numbers
        return (self.num_layers * self.num_directions, batch,
                self.hidden_size if size is None else size)


@dataclass
class Call:
    """One normalized forward call."""
    x: Tensor                     # [T, B, I]
    hx: Tensor | None             # [L*D, B, P]
    lengths: Tensor | None        # CPU int64 [B]
    restore: Restore
    cx: Tensor | None = None      # an LSTM's [L*D, B, H]
    # An input or state of another dtype than the weights, which nn's module leaves to
    # its kernel (to cast, or to reject in its own way): under autocast, and an LSTM's
    # (h0, c0) always (nn.LSTM checks no state's dtype). gru_torch then runs that kernel too.
    mixed_dtypes: bool = False


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


def _check_hidden_size(hx, expected: tuple, which: str = "") -> None:
    """nn.RNNBase.check_hidden_size; which: "[0]" or "[1]" for an LSTM's h and c."""
    try:
        size = hx.size()
    except AttributeError as e:
        _checks.reraise(e, f"hx{which} must be a Tensor, got {type(hx).__name__}")
    if size != expected:
        head = f"Expected hidden{which} size" if which else "Expected hidden size"
        raise RuntimeError(f"{head} {expected}, got {list(size)} (hx{which} must be "
                           "[num_layers * num_directions, batch, hidden_size])")


def _check_hidden(hx, cx, batch: int, spec: Spec) -> None:
    if spec.has_c:
        _check_hidden_size(hx, spec.expected_hidden(batch), "[0]")
        _check_hidden_size(cx, spec.expected_hidden(batch, spec.cell_size), "[1]")
    else:
        _check_hidden_size(hx, spec.expected_hidden(batch))


def _sorted_hx(hx, sorted_indices: Tensor, expected: tuple) -> Tensor:
    """hx in a PackedSequence's sorted row order, selected as nn selects it."""
    try:
        return hx.index_select(1, sorted_indices)
    except AttributeError as e:
        _checks.reraise(e, f"hx must be a Tensor, got {type(hx).__name__}")
    except (IndexError, RuntimeError) as e:
        _checks.reraise(e, f"hx must have shape {expected}, got {tuple(hx.shape)}")


class PackedDeviceError(RuntimeError):
    """A PackedSequence or state that nn's packed path rejects in its own kernel (another
    device than the parameters; for an LSTM, any bad (h0, c0)): that path checks neither
    devices nor, for an LSTM, the states in Python, so its first operation to fail names
    the fault, and the module asks nn's kernel for it (see RNNBase.forward)."""


def _check_packed_devices(data: Tensor, states, spec: Spec) -> None:
    for t, what in ((data, "the PackedSequence's data"), *states):
        if t is not None and t.device != spec.weight.device:
            raise PackedDeviceError(f"{what} is on {t.device}, but the {spec.name}'s "
                                    f"parameters are on {spec.weight.device}")


def _check_devices(x: Tensor, states, weight: Tensor) -> None:
    """The device checks of nn's kernels (at::gru, at::lstm, at::rnn_*)."""
    if x.device != weight.device:
        raise RuntimeError("Input and parameter tensors are not at the same device, found "
                           f"input tensor at {x.device} and parameter tensor at {weight.device}")
    for t in states:
        if t is not None and t.device != x.device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found "
                               f"input tensor at {x.device} and hidden tensor at {t.device}")


def _check_two_states(hx) -> None:
    """at::lstm's first check: an LSTM's hx holds exactly (h0, c0)."""
    if len(hx) != 2:
        raise RuntimeError(f"lstm expects two hidden states (hx must be a tuple (h_0, c_0), "
                           f"got {len(hx)} tensors)")


def _split_state(hx, spec: Spec):
    """(h0, c0) from an LSTM's hx, read as nn.LSTM reads it (hx[0], hx[1]); (hx, None)
    for the others."""
    if hx is None or not spec.has_c:
        return hx, None
    try:
        return hx[0], hx[1]
    except (TypeError, IndexError, KeyError) as e:
        _checks.reraise(e, "hx must be a tuple (h_0, c_0) of tensors")


def _normalize_packed(input: PackedSequence, hx, spec: Spec, restore: Restore):
    data, batch_sizes, sorted_indices, unsorted_indices = input
    expected = spec.expected_hidden(int(batch_sizes[0]))
    if spec.has_c:
        try:
            h0, c0 = _split_state(hx, spec)
            if hx is not None and sorted_indices is None:
                _check_two_states(hx)  # (nn.LSTM re-packs a pair when it sorts the rows)
            if hx is not None and sorted_indices is not None:
                h0, c0 = (_sorted_hx(h0, sorted_indices, expected),
                          _sorted_hx(c0, sorted_indices,
                                     spec.expected_hidden(expected[1], spec.cell_size)))
            _check_input(data, 2, spec)
            if hx is not None:
                _check_hidden(h0, c0, expected[1], spec)
        except (RuntimeError, TypeError, IndexError, ValueError, AttributeError) as e:
            # nn.LSTM checks nothing of a packed call in Python: its kernel's error is nn's
            raise PackedDeviceError(str(e)) from None
    else:
        h0, c0 = hx, None
        if h0 is not None and sorted_indices is not None:
            h0 = _sorted_hx(h0, sorted_indices, expected)
        _check_input(data, 2, spec)
        if h0 is not None:
            _check_hidden_size(h0, expected)
    _check_packed_devices(data, ((h0, "hx"), (c0, "cx")), spec)
    x, lengths = pad_packed_sequence(input)  # [T, B, I] in the caller's row order
    if h0 is not None and unsorted_indices is not None:
        h0 = h0.index_select(1, unsorted_indices)
        c0 = None if c0 is None else c0.index_select(1, unsorted_indices)
    restore.packed, restore.lengths = input, lengths
    return x, h0, c0, lengths


def _normalize_padded(input, hx, spec: Spec, restore: Restore):
    dim = _checks.tensor_dim(input, "input (a Tensor or PackedSequence)")
    if dim not in (2, 3):
        tensor = " tensor" if spec.name == "RNN" else ""
        raise ValueError(f"{spec.name}: Expected input to be 2D or 3D, got {dim}D{tensor} instead")
    batched = dim == 3
    h0, c0 = _split_state(hx, spec)
    if hx is not None:
        want = 3 if batched else 2
        if spec.has_c:
            dims = (_checks.tensor_dim(h0, "hx[0]"), _checks.tensor_dim(c0, "hx[1]"))
            if dims != (want, want):
                raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                                   f"hx and cx should also be {want}-D but got ({dims[0]}-D, "
                                   f"{dims[1]}-D) tensors")
        else:
            hx_dim = _checks.tensor_dim(h0, "hx")
            if hx_dim != want:
                raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                                   f"hx should also be {want}-D but got {hx_dim}-D tensor")
    batch_dim = 0 if spec.batch_first else 1
    if not batched:
        restore.unbatched = True
        input = input.unsqueeze(batch_dim)
        h0 = None if h0 is None else h0.unsqueeze(1)
        c0 = None if c0 is None else c0.unsqueeze(1)
    _check_input(input, 3, spec)
    if h0 is not None:
        _check_hidden(h0, c0, input.size(batch_dim), spec)
        if spec.has_c:
            _check_two_states(hx)
    x = input.transpose(0, 1) if spec.batch_first else input
    _check_devices(x, (h0, c0), spec.weight)
    if x.shape[0] == 0:
        raise RuntimeError(f"{_checks.EMPTY_SEQUENCE} (the input has no time steps)")
    return x, h0, c0


def normalize(input, hx, lengths, spec: Spec) -> Call:
    """Checks a call as nn's module does, then brings it to the op's layout."""
    restore = Restore(batch_first=spec.batch_first)
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths must not be given with a PackedSequence input "
                             "(the PackedSequence carries its own lengths)")
        x, h0, c0, lengths = _normalize_packed(input, hx, spec, restore)
    else:
        x, h0, c0 = _normalize_padded(input, hx, spec, restore)
        if lengths is not None:
            lengths = _check_lengths(lengths, x.shape[0], x.shape[1])
            x = _without_padding(x, lengths)
    weight_dtype = spec.weight.dtype
    states = [t for t in (h0, c0) if t is not None]
    mixed = x.dtype != weight_dtype or any(t.dtype != weight_dtype for t in states)
    if mixed and not torch._C._is_any_autocast_enabled() and not spec.has_c:
        # only a state can differ here: check_input has caught the input
        bad = next(t for t in states if t.dtype != weight_dtype)
        raise RuntimeError(f"{_checks.linear_error(bad, spec.weight, spec.bias)} (hx dtype "
                           f"{bad.dtype} does not match the {spec.name}'s parameters, "
                           f"{weight_dtype})")
    return Call(x, h0, lengths, restore, cx=c0, mixed_dtypes=mixed)
