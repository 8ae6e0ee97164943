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
from twotower.data.tables import ITEM, USER


class ShardBatches(IterableDataset):
    """One rank's training pairs: its row groups in a seeded random order, through a shuffle buffer.

    Yields exactly ``steps`` (B, 2) tensors of (user row, item row) per epoch, so every rank takes the
    same number of steps; the rows left over are the ragged end of the rank's share. They are int32 when
    both tables' rows fit (half the bytes to gather, pin and copy to the device; ``train_batch`` widens
    them there), else int64.

    A background thread reads the row groups and keeps the training pairs (by the set-up scan's masks), handing
    over blocks of at least ``BLOCK_ROWS`` pairs (``prefetch`` blocks ahead); this thread shuffles each
    block into the buffer (``BlockShuffle``) and hands out views of the shuffled block: a batch costs
    a slice, not a copy. With ``pin_memory`` the shuffled blocks are page-locked, so the copy of each
    batch to the GPU can be asynchronous.
    """

    BLOCK_ROWS = 1 << 20  # at least: the buffer is re-permuted once per block

    def __init__(self, shards: InteractionShards, row_groups: list[int], train_masks: list[np.ndarray], steps: int, batch_size: int, buffer: int, seed: int, rank: int,
                 pin_memory: bool = False, prefetch: int = 2):
        self.shards, self.row_groups, self.train_masks = shards, row_groups, train_masks
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
        ``BLOCK_ROWS`` (or the buffer) at a time but the last: each record batch's pairs written in place.

        int32 when both tables' rows fit: half the bytes for the reader to write and the shuffle to move."""
        least = max(self.BLOCK_ROWS, self.buffer)
        fits = max(len(self.shards.ids[USER].keys), len(self.shards.ids[ITEM].keys)) <= np.iinfo(np.int32).max
        block, size = np.empty((least + self.shards.read_rows, 2), dtype=np.int32 if fits else np.int64), 0
        unpacked, group_train = None, np.zeros(0, dtype=bool)
        for chunk in self.shards.chunks(row_groups, times=False, splits=False):
            group = self.shards.row_groups[chunk.row_group]
            if chunk.row_group != unpacked:
                unpacked, group_train = chunk.row_group, np.unpackbits(self.train_masks[chunk.row_group], count=group.rows).view(bool)
            start = chunk.offset - group.offset
            train = np.flatnonzero(group_train[start : start + len(chunk.users)])
            block[size : size + len(train), 0] = chunk.users.take(train)  # take's out= into a narrower type is buffered: slower
            block[size : size + len(train), 1] = chunk.items.take(train)
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

    Each row going out is a draw from the held rows and the block (tf.data's buffer draws from the held rows, one
    row at a time); every row goes out exactly once, in an order fixed by ``rng``. The permutation is
    ``torch.randperm``'s Fisher-Yates (2.5x numpy's, whose bounded draws cost more than the swaps): each swap picks
    among the k rows left by a 32-bit draw modulo k, so each pick's chances are uniform up to a relative error
    below k / 2**32 (3e-4 for a pool of 1.3M rows), where numpy's picks are exactly uniform.

    Rows go out in the blocks' type.
    """

    def __init__(self, capacity: int, batch_size: int, rng: np.random.Generator, pin_memory: bool = False):
        self.capacity, self.batch_size, self.pin_memory = capacity, batch_size, pin_memory
        self.generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        self.held = np.empty((0, 2), dtype=np.int64)  # takes the blocks' type from the first push on

    def push(self, block: np.ndarray) -> torch.Tensor:
        """(m, 2): the rows going out, shuffled; m is a multiple of the batch size."""
        pool = np.concatenate([self.held, block]) if len(self.held) else block
        order = self._permutation(len(pool))
        out = max(len(pool) - self.capacity, 0) // self.batch_size * self.batch_size
        self.held = pool.take(order[out:], axis=0)
        return self._gathered(pool, order[:out])

    def drain(self) -> torch.Tensor:
        """Every row still held, shuffled."""
        rows, self.held = self.held, self.held[:0]
        return self._gathered(rows, self._permutation(len(rows)))

    def _permutation(self, n: int) -> np.ndarray:
        narrow = n <= torch.iinfo(torch.int32).max  # half the bytes to write and to read as take's indices
        return torch.randperm(n, generator=self.generator, dtype=torch.int32 if narrow else torch.int64).numpy()

    def _gathered(self, pool: np.ndarray, order: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(pool.take(order, axis=0))  # take's out= (straight into pinned memory) is slower than take + copy
        return rows.pin_memory() if self.pin_memory else rows


class ShardStream:
    """``Prepared.stream`` of sharded interactions: each process's row groups (``InteractionShards.assign``), shuffled.

    Args:
        train_masks: per row group, ``np.packbits`` of which of its rows train (from the set-up scan): the split
            is computed once, not once per epoch.
        pin_memory: page-lock the training batches when CUDA is available (never without it).
    """

    def __init__(self, shards: InteractionShards, train_masks: list[np.ndarray], shuffle_buffer: int, seed: int, pin_memory: bool = True):
        self.shards, self.train_masks = shards, train_masks
        self.train_rows_per_group = np.array([int(np.unpackbits(mask).sum()) for mask in train_masks], dtype=np.int64)  # packbits pads with 0
        self.shuffle_buffer, self.seed, self.pin_memory = shuffle_buffer, seed, pin_memory
        self.description = f"row groups: {len(shards.row_groups)} of {len(shards.files)} shards in {shards.directory}"

    def steps(self, world_size: int, batch_size: int) -> int:
        """Full batches every rank can fill: the fewest train rows any rank owns, over batch_size."""
        if self.shuffle_buffer < batch_size:
            raise ValueError(f"shuffle_buffer={self.shuffle_buffer} must hold at least one batch (batch_size={batch_size})")
        per_rank = [int(self.train_rows_per_group[self.shards.assign(r, world_size)].sum()) for r in range(world_size)]
        return min(per_rank) // batch_size

    def batches(self, rank: int, world_size: int, epoch: int, batch_size: int) -> ShardBatches:
        batches = ShardBatches(self.shards, self.shards.assign(rank, world_size), self.train_masks, self.steps(world_size, batch_size),
                               batch_size, self.shuffle_buffer, self.seed, rank, pin_memory=self.pin_memory and torch.cuda.is_available())
        batches.epoch = epoch
        return batches
