"""One process's share of the training pairs, streamed from its row groups through a shuffle buffer."""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from twotower.data.streaming.scan import TRAIN
from twotower.data.streaming.shards import InteractionShards


class ShardBatches(IterableDataset):
    """One rank's training pairs: its row groups in a seeded random order, through a shuffle buffer.

    Yields exactly ``steps`` (B, 2) tensors of (user row, item row) per epoch, so every rank
    takes the same number of steps; the rows left over are the ragged end of the rank's share.
    """

    def __init__(self, shards: InteractionShards, row_groups: list[int], labels, steps: int, batch_size: int, buffer: int, seed: int, rank: int):
        self.shards, self.row_groups, self.labels = shards, row_groups, labels
        self.steps, self.batch_size, self.buffer, self.seed, self.rank = steps, batch_size, buffer, seed, rank
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        self.epoch += 1
        buffer = ShuffleBuffer(self.buffer, self.batch_size, rng)
        streamed = itertools.chain.from_iterable(buffer.push(pairs) for pairs in self.pairs(rng.permutation(self.row_groups).tolist()))
        # drain() runs only once the stream is spent: what the buffer still holds, then stop at ``steps``.
        for batch in itertools.islice(itertools.chain(streamed, buffer.drain()), self.steps):
            yield torch.from_numpy(batch)

    def pairs(self, row_groups: list[int] | None = None) -> Iterator[np.ndarray]:
        """(n, 2) train (user row, item row) pairs of the rank's row groups (in this order), unshuffled."""
        for chunk in self.shards.chunks(self.row_groups if row_groups is None else row_groups):
            train = self.labels(chunk) == TRAIN
            yield np.stack([chunk.users[train], chunk.items[train]], 1)


class ShuffleBuffer:
    """A fixed-size buffer of rows: each incoming batch of rows replaces a random batch of the buffer,
    which goes out (tf.data's shuffle buffer, a batch at a time)."""

    def __init__(self, capacity: int, batch_size: int, rng: np.random.Generator):
        self.rows = np.empty((capacity, 2), dtype=np.int64)
        self.size, self.batch_size, self.rng = 0, batch_size, rng
        self.pending = self.rows[:0]

    def push(self, pairs: np.ndarray) -> Iterator[np.ndarray]:
        capacity = len(self.rows)
        fill = min(capacity - self.size, len(pairs))
        self.rows[self.size : self.size + fill] = pairs[:fill]
        self.size += fill
        self.pending = np.concatenate([self.pending, pairs[fill:]])
        while len(self.pending) >= self.batch_size:
            slots = self.rng.choice(capacity, self.batch_size, replace=False)
            out = self.rows[slots]  # a copy (fancy indexing)
            self.rows[slots] = self.pending[: self.batch_size]
            self.pending = self.pending[self.batch_size :]
            yield out

    def drain(self) -> Iterator[np.ndarray]:
        """The rows still held, shuffled, in full batches."""
        rest = np.concatenate([self.rows[: self.size], self.pending])
        self.rng.shuffle(rest)
        for start in range(0, len(rest) - self.batch_size + 1, self.batch_size):
            yield rest[start : start + self.batch_size]


class ShardStream:
    """``Prepared.stream`` of sharded interactions: each process's row groups (``InteractionShards.assign``), shuffled.

    Args:
        train_rows_per_group: (n_row_groups,) training pairs in each row group (from the set-up scan).
        labels: a chunk's (n,) split codes.
    """

    def __init__(self, shards: InteractionShards, train_rows_per_group: np.ndarray, labels, shuffle_buffer: int, seed: int):
        self.shards, self.train_rows_per_group, self.labels = shards, train_rows_per_group, labels
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.description = f"row groups: {len(shards.row_groups)} of {len(shards.files)} shards in {shards.directory}"

    def steps(self, world_size: int, batch_size: int) -> int:
        """Full batches every rank can fill: the fewest train rows any rank owns, over batch_size."""
        if self.shuffle_buffer < batch_size:
            raise ValueError(f"shuffle_buffer={self.shuffle_buffer} must hold at least one batch (batch_size={batch_size})")
        per_rank = [int(self.train_rows_per_group[self.shards.assign(r, world_size)].sum()) for r in range(world_size)]
        return min(per_rank) // batch_size

    def batches(self, rank: int, world_size: int, epoch: int, batch_size: int) -> ShardBatches:
        batches = ShardBatches(self.shards, self.shards.assign(rank, world_size), self.labels, self.steps(world_size, batch_size),
                               batch_size, self.shuffle_buffer, self.seed, rank)
        batches.epoch = epoch
        return batches
