"""The pieces of the sharded training stream: id lookup, the background reader, the block shuffle."""
from __future__ import annotations

import itertools
import threading
from contextlib import closing

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from twotower.data.streaming.prefetch import prefetched
from twotower.data.streaming.shards import IdRows
from twotower.data.streaming.stream import BlockShuffle


@pytest.mark.parametrize(
    "keys, ids, rows",
    [
        (["5", "7", "9", "x", "012"], [5, 9, 12, 100, -3, 7], [0, 2, -1, -1, -1, 1]),  # dense table; "012" is not 12
        (["0", "1", "2"], [2, 0, 5, -1], [2, 0, -1, -1]),  # ids that are their rows
        (["1", "1000000000000"], [1000000000000, 1, 2], [1, 0, -1]),  # sparse: a hash lookup
        (["-1", "1"], pa.array([2**64 - 1, 1], pa.uint64()), [-1, 1]),  # past int64: never wraps onto "-1"
    ],
)
def test_integer_ids_map_to_table_rows(keys, ids, rows):
    column = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.int64())
    np.testing.assert_array_equal(IdRows(pd.Index(keys), "users.parquet")(column), rows)


def test_prefetched_keeps_order_and_raises_the_producers_error_here():
    def produce():
        yield from range(5)
        raise ValueError("shard part-03.parquet: column 'uid' has 1 missing value(s)")

    seen = []
    with pytest.raises(ValueError, match=r"part-03\.parquet: column 'uid'"):
        for item in prefetched(produce, depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_prefetched_early_stops_its_thread():
    with closing(prefetched(itertools.count, depth=2)) as items:
        assert list(itertools.islice(items, 3)) == [0, 1, 2]
    assert not any(t.name == "twotower-shard-reader" for t in threading.enumerate())


def test_block_shuffle_sends_every_row_once_holding_at_most_its_capacity():
    rows = np.stack([np.arange(10_000), np.arange(10_000) * 7], 1)
    shuffle = BlockShuffle(capacity=1_000, batch_size=64, rng=np.random.default_rng(0))
    out = []
    for block in np.array_split(rows, 7):
        sent = shuffle.push(block)
        assert len(sent) % 64 == 0 and len(shuffle.held) <= 1_000 + 64
        out.append(sent)
    out.append(shuffle.drain())
    everything = torch.cat(out).numpy()
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, rows.tolist()))  # each row once, pairs intact
    assert not np.array_equal(everything, rows)
    again = BlockShuffle(capacity=1_000, batch_size=64, rng=np.random.default_rng(0))
    replay = [again.push(block) for block in np.array_split(rows, 7)] + [again.drain()]
    assert torch.equal(torch.cat(replay), torch.from_numpy(everything))  # seeded
