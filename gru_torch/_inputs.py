"""Normalizing a GRU call's arguments: layouts, packed input, lengths, checks.

Everything becomes time-major [T, B, I] with hx [L*D, B, H] and optional int64 lengths;
`Restore` puts the results back into the caller's layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


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


def normalize(input, hx, lengths, *, input_size: int, hidden_size: int, num_directions: int,
              num_layers: int, batch_first: bool, dtype: torch.dtype, device: torch.device):
    """-> (x [T, B, I], hx [L*D, B, H] or None, lengths CPU int64 or None, Restore)."""
    restore = Restore(batch_first=batch_first)
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths must not be given with a PackedSequence input "
                             "(the PackedSequence carries its own lengths)")
        restore.packed = input
        input, lengths = pad_packed_sequence(input, batch_first=False)
        restore.lengths = lengths
        batch_first = False
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() not in (2, 3):
        raise ValueError(f"input must be 2-D (unbatched [T, I]) or 3-D (batched), "
                         f"got shape {tuple(input.shape)}")
    if input.shape[-1] != input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size ({input_size}), "
                         f"got {input.shape[-1]}")
    if input.dtype != dtype:
        raise TypeError(f"input dtype {input.dtype} does not match the GRU's parameters ({dtype})")
    if input.device != device:
        raise ValueError(f"input is on {input.device} but the GRU's parameters are on {device}")
    expected_h = (num_layers * num_directions, hidden_size)
    if input.dim() == 2:
        if restore.packed is None:
            restore.unbatched = True
        input = input.unsqueeze(1)
        if hx is not None:
            if hx.dim() != 2:
                raise ValueError(f"for unbatched input, hx must be 2-D {expected_h}, "
                                 f"got shape {tuple(hx.shape)}")
            hx = hx.unsqueeze(1)
    elif batch_first:
        input = input.transpose(0, 1)
    T, B = input.shape[0], input.shape[1]
    if T == 0:
        raise ValueError("input must have at least one time step")
    if hx is not None:
        if not isinstance(hx, Tensor):
            raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
        want = (expected_h[0], B, hidden_size)
        if tuple(hx.shape) != want:
            raise ValueError(f"hx must have shape {want}, got {tuple(hx.shape)}")
        if hx.dtype != dtype:
            raise TypeError(f"hx dtype {hx.dtype} does not match input dtype {dtype}")
        if hx.device != device:
            raise ValueError(f"hx is on {hx.device} but input is on {device}")
    if lengths is not None:
        lengths = _check_lengths(lengths, T, B)
    return input, hx, lengths, restore
