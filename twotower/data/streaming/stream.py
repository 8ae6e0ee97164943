"""One process's share of the training pairs, streamed from its row groups through a shuffle buffer."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import closing

import numpy as np
import torch
from torch.utils.data import IterableDataset

from twotower.data.streaming.prefetch import prefetched
from twotower.data.streaming.shards import InteractionShards


class ShardBatches(IterableDataset):
    """One rank's training pairs: its row groups in a seeded random order, through a shuffle buffer.

    Yields exactly ``steps`` (B, 2) int64 tensors of (user row, item row) per epoch, so every rank
    takes the same number of steps; the rows left over are the ragged end of the rank's share.

    A background thread reads the row groups, labels the rows and keeps the training pairs, handing
    over blocks of at least ``BLOCK_ROWS`` pairs (``prefetch`` blocks ahead); this thread shuffles each
    block into the buffer (``BlockShuffle``) and hands out views of the shuffled block: a batch costs
    a slice, not a copy. With ``pin_memory`` the shuffled blocks are page-locked, so the copy of each
    batch to the GPU can be asynchronous.
    """

    BLOCK_ROWS = 1 << 20  # at least: the buffer is re-permuted once per block

    def __init__(self, shards: InteractionShards, row_groups: list[int], labels, steps: int, batch_size: int, buffer: int, seed: int, rank: int,
                 pin_memory: bool = False, prefetch: int = 2):
        self.shards, self.row_groups, self.labels = shards, row_groups, labels
        self.steps, self.batch_size, self.buffer, self.seed, self.rank = steps, batch_size, buffer, seed, rank
        self.pin_memory, self.prefetch = pin_memory, prefetch
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        self.epoch += 1
        order = rng.permutation(self.row_groups).tolist()
        shuffle = BlockShuffle(self.buffer, self.batch_size, rng, self.pin_memory)
        with closing(prefetched(lambda: self.blocks(order), self.prefetch)) as blocks:
            batches = (batch for block in _pushed(shuffle, blocks) for batch in block.split(self.batch_size) if len(batch) == self.batch_size)
            yield from itertools.islice(batches, self.steps)

    def blocks(self, row_groups: list[int]) -> Iterator[np.ndarray]:
        """(n, 2) train (user row, item row) pairs of the row groups (in this order), unshuffled, at least
        ``BLOCK_ROWS`` (or the buffer) at a time but the last: each record batch's pairs written in place."""
        least = max(self.BLOCK_ROWS, self.buffer)
        block, size = np.empty((least + self.shards.read_rows, 2), dtype=np.int64), 0
        for chunk in self.shards.chunks(row_groups, times=False):
            train = np.flatnonzero(self.labels.train(chunk))
            np.take(chunk.users, train, out=block[size : size + len(train), 0])  # straight into the block: no temporaries
            np.take(chunk.items, train, out=block[size : size + len(train), 1])
            size += len(train)
            if size >= least:
                yield block[:size]
                block, size = np.empty_like(block), 0
        if size:
            yield block[:size]


def _pushed(shuffle: BlockShuffle, blocks: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
    for block in blocks:
        yield shuffle.push(block)
    yield shuffle.drain()  # only once the stream is spent


class BlockShuffle:
    """A shuffle buffer of about ``capacity`` rows, fed a block at a time: the held rows and the incoming block are
    permuted together, a whole number of batches of them go out and less than ``capacity`` + one batch stay held.

    Each row going out is a uniform draw from the held rows and the block (tf.data's buffer draws from the
    held rows, one row at a time); every row goes out exactly once, in an order fixed by ``rng``.
    """

    def __init__(self, capacity: int, batch_size: int, rng: np.random.Generator, pin_memory: bool = False):
        self.capacity, self.batch_size, self.rng, self.pin_memory = capacity, batch_size, rng, pin_memory
        self.held = np.empty((0, 2), dtype=np.int64)

    def push(self, block: np.ndarray) -> torch.Tensor:
        """(m, 2): the rows going out, shuffled; m is a multiple of the batch size."""
        pool = np.concatenate([self.held, block])
        order = self.rng.permutation(len(pool))
        out = max(len(pool) - self.capacity, 0) // self.batch_size * self.batch_size
        self.held = pool.take(order[out:], axis=0)
        return self._gathered(pool, order[:out])

    def drain(self) -> torch.Tensor:
        """Every row still held, shuffled."""
        rows, self.held = self.held, self.held[:0]
        return self._gathered(rows, self.rng.permutation(len(rows)))

    def _gathered(self, pool: np.ndarray, order: np.ndarray) -> torch.Tensor:
        if not self.pin_memory:
            return torch.from_numpy(pool.take(order, axis=0))
        out = torch.empty((len(order), 2), dtype=torch.int64, pin_memory=True)
        np.take(pool, order, axis=0, out=out.numpy())
        return out


class ShardStream:
    """``Prepared.stream`` of sharded interactions: each process's row groups (``InteractionShards.assign``), shuffled.

    Args:
        train_rows_per_group: (n_row_groups,) training pairs in each row group (from the set-up scan).
        labels: a chunk's split codes (``labels.HashCodes`` or ``labels.ColumnCodes``).
        pin_memory: page-lock the training batches when CUDA is available (never without it).
    """

    def __init__(self, shards: InteractionShards, train_rows_per_group: np.ndarray, labels, shuffle_buffer: int, seed: int, pin_memory: bool = True):
        self.shards, self.train_rows_per_group, self.labels = shards, train_rows_per_group, labels
        self.shuffle_buffer, self.seed, self.pin_memory = shuffle_buffer, seed, pin_memory
        self.description = f"row groups: {len(shards.row_groups)} of {len(shards.files)} shards in {shards.directory}"

    def steps(self, world_size: int, batch_size: int) -> int:
        """Full batches every rank can fill: the fewest train rows any rank owns, over batch_size."""
        if self.shuffle_buffer < batch_size:
            raise ValueError(f"shuffle_buffer={self.shuffle_buffer} must hold at least one batch (batch_size={batch_size})")
        per_rank = [int(self.train_rows_per_group[self.shards.assign(r, world_size)].sum()) for r in range(world_size)]
        return min(per_rank) // batch_size

    def batches(self, rank: int, world_size: int, epoch: int, batch_size: int) -> ShardBatches:
        batches = ShardBatches(self.shards, self.shards.assign(rank, world_size), self.labels, self.steps(world_size, batch_size),
                               batch_size, self.shuffle_buffer, self.seed, rank, pin_memory=self.pin_memory and torch.cuda.is_available())
        batches.epoch = epoch
        return batches
