"""A chunk's split codes from the row alone: HashSplit's seeded hash of its two ids, or the shards' split column."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from twotower.data.splits import HashSplit, mix64
from twotower.data.streaming.shards import Chunk
from twotower.data.tables import ITEM, USER

TRAIN, VAL, TEST = 0, 1, 2


class HashCodes:
    """``HashSplit.codes`` of a chunk's rows in a few passes over its id arrays.

    The same codes (tests/test_streaming_labels.py pins them): the entities' hashes, and the item side's
    inner ``mix64``, are computed once per table rather than once per row, and HashSplit's float
    comparisons become integer ones. HashSplit's uniform is ``k * 2**-53`` with ``k = h >> 11`` (exact,
    as k < 2**53), and for an integer k, ``k * 2**-53 < t`` exactly when ``k < ceil(t * 2**53)``.
    """

    def __init__(self, split: HashSplit, users: pd.DataFrame, items: pd.DataFrame):
        self.user_hashes = split.key_hashes(users[USER])  # (n_users,) uint64
        self.item_mixed = mix64(split.key_hashes(items[ITEM]))  # (n_items,) uint64
        self.test_below = np.uint64(math.ceil(split.test * 2.0**53))
        self.val_below = np.uint64(math.ceil((split.test + (1 - split.test) * split.val) * 2.0**53))

    def __call__(self, chunk: Chunk) -> np.ndarray:
        """(n,) int8: 0 train, 1 val, 2 test."""
        k = self._k(chunk)
        return (k < self.val_below).view(np.int8) + (k < self.test_below).view(np.int8)

    def train(self, chunk: Chunk) -> np.ndarray:
        """(n,) bool: the training rows."""
        return self._k(chunk) >= self.val_below

    def _k(self, chunk: Chunk) -> np.ndarray:
        """(n,) uint64 < 2**53: HashSplit's uniform of each row, times 2**53."""
        return mix64(self.user_hashes.take(chunk.users) ^ self.item_mixed.take(chunk.items)) >> np.uint64(11)


class ColumnCodes:
    """The shards' split column (``PredefinedSplit``)."""

    def __call__(self, chunk: Chunk) -> np.ndarray:
        return chunk.splits

    def train(self, chunk: Chunk) -> np.ndarray:
        return chunk.splits == TRAIN
