"""The sharded path's split codes are HashSplit's, row for row (the split of a row never depends on the path)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower.data.splits import HashSplit
from twotower.data.streaming.labels import TRAIN, ColumnCodes, HashCodes
from twotower.data.streaming.shards import Chunk


@pytest.mark.parametrize("split", [HashSplit(seed=3), HashSplit(test=0.5, val=0.5, seed=1), HashSplit(test=0.1, val=0.3, seed=12345678901234567)])
def test_hash_codes_equal_hash_split_codes_row_for_row(split):
    users = pd.DataFrame({"user_id": [f"u{v}" for v in range(300)]})
    items = pd.DataFrame({"item_id": [str(v) for v in range(200)]})
    rng = np.random.default_rng(0)
    chunk = Chunk(0, 0, rng.integers(0, 300, 50_000), rng.integers(0, 200, 50_000), None, None)
    expected = split.codes(split.key_hashes(users["user_id"])[chunk.users], split.key_hashes(items["item_id"])[chunk.items])
    codes = HashCodes(split, users, items)
    np.testing.assert_array_equal(codes(chunk), expected)
    np.testing.assert_array_equal(codes.train(chunk), expected == TRAIN)
    assert set(np.unique(expected)) == {0, 1, 2}


@pytest.mark.parametrize("test, val", [(0.2, 0.1), (0.1, 0.3), (1 / 3, 1 / 7)])
def test_integer_thresholds_decide_as_hash_splits_floats_at_the_boundary(test, val):
    """k * 2**-53 < t exactly when k < ceil(t * 2**53): checked on the integers either side of each threshold."""
    codes = HashCodes(HashSplit(test=test, val=val), pd.DataFrame({"user_id": ["a"]}), pd.DataFrame({"item_id": ["b"]}))
    for threshold, below in ((test, codes.test_below), (test + (1 - test) * val, codes.val_below)):
        for k in range(int(below) - 3, int(below) + 3):
            assert (np.uint64(k) < below) == (float(k) * 2.0**-53 < threshold), (threshold, k)


def test_column_codes_are_the_split_column():
    splits = np.array([0, 2, 1, 0], dtype=np.int8)
    chunk = Chunk(0, 0, np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64), None, splits)
    np.testing.assert_array_equal(ColumnCodes()(chunk), splits)
    np.testing.assert_array_equal(ColumnCodes().train(chunk), [True, False, False, True])
