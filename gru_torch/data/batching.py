"""Padded batches that carry their lengths, with optional bucketing by length."""
from __future__ import annotations

import numpy as np
import torch


class ReviewBatches:
    """Iterates (ids [B, T] int64 post-padded, lengths [B], labels [B] float) over
    sequences of token ids, each cut to its last `maxlen` ids (Keras's truncating="pre").

    pad_to pads every batch to a fixed width, as Keras's pad_sequences(maxlen,
    padding="post") does. bucket=True sorts each window of `bucket_batches` batches by length before cutting
    it into batches (less padding, same randomness across epochs via `seed`).
    rank / world_size shard the batches for data-parallel training."""

    def __init__(self, sequences, labels, batch_size: int, maxlen: int | None = None,
                 shuffle: bool = True, bucket: bool = False, bucket_batches: int = 50,
                 seed: int = 0, pad_to: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        if len(sequences) != len(labels):
            raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        cut = (lambda s: s[-maxlen:]) if maxlen else (lambda s: s)
        self.seqs = [np.asarray(cut(s), dtype=np.int64) for s in sequences]
        if any(len(s) == 0 for s in self.seqs):
            raise ValueError("every sequence needs at least one token")
        self.labels = np.asarray(labels, dtype=np.float32)
        self.batch_size, self.shuffle, self.bucket = batch_size, shuffle, bucket
        self.bucket_batches, self.seed, self.epoch = bucket_batches, seed, 0
        self.pad_to = pad_to  # a fixed width (Keras's pad_sequences(maxlen)) instead of the batch's longest
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return (len(self.seqs) + self.batch_size - 1) // self.batch_size // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[np.ndarray]:
        n = len(self.seqs)
        rng = np.random.RandomState(self.seed + self.epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket:
            window = self.batch_size * self.bucket_batches
            lengths = np.array([len(s) for s in self.seqs])
            order = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                                    for w in np.array_split(order, max(1, -(-n // window)))])
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.bucket and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        # Data parallel: every rank shuffles alike and takes every world_size-th batch; all
        # ranks get the same count (the remainder is dropped) so their collectives match.
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank: per_rank * self.world_size: self.world_size]

    def __iter__(self):
        for idx in self._order():
            seqs = [self.seqs[i] for i in idx]
            lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
            width = max(int(lengths.max()), self.pad_to or 0)
            ids = torch.zeros(len(seqs), width, dtype=torch.int64)
            for row, s in enumerate(seqs):
                ids[row, :len(s)] = torch.from_numpy(s)
            yield ids, lengths, torch.from_numpy(self.labels[idx])
