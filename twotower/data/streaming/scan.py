"""One streaming pass over interaction shards: everything global that training needs.

Memory is bounded by the number of users and items (counts, history tables) and by the
interactions of a sample of users (evaluation), never by the number of interactions.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from twotower.data.splits import mix64
from twotower.data.streaming.labels import TEST, TRAIN
from twotower.data.streaming.prefetch import prefetched
from twotower.data.streaming.shards import Chunk, InteractionShards


@dataclass
class ShardScan:
    split_counts: np.ndarray  # (3,) rows per split (train, val, test)
    user_counts: np.ndarray  # (n_users,) train rows per user
    item_counts: np.ndarray  # (n_items,) train rows per item
    train_masks: list[np.ndarray]  # per row group, np.packbits of its rows' "is train": 1 bit a row, so epochs skip the hashing
    sample: dict[str, np.ndarray]  # "users", "items", "splits": every row of the sampled users
    history: dict[str, np.ndarray] | None  # "val" (train rows), "test" (train + val rows): (n_users, L) item rows, -1 = empty


@dataclass
class ServingScan:
    users: np.ndarray  # (n,) user row of every interaction, all splits
    items: np.ndarray  # (n,) item row
    times: np.ndarray  # (n,) float64 timestamp (0 without a timestamp column)
    history: np.ndarray | None  # (n_users, L) item rows of each user's latest interactions, -1 = empty


class RecentItems:
    """Each user's ``max_len`` highest-key (most recent) items over rows arriving in any order.

    Ties keep the lower row number, as a stable sort of all rows by (user, -key) would. A row that
    cannot beat its user's last kept slot is dropped on arrival by one comparison; the others wait
    in a buffer of half the table's size and are merged in one pass (in blocks of users, to bound
    the sort's temporaries), so re-sorting the kept slots is paid once per buffer, not per record batch.
    """

    BLOCK = 1 << 21  # kept slots + new rows sorted at once

    def __init__(self, n_users: int, max_len: int):
        self.items = np.full((n_users, max_len), -1, dtype=np.int32)  # most recent first
        self.keys = np.full((n_users, max_len), -np.inf)
        self.rows = np.full((n_users, max_len), np.iinfo(np.int64).max)  # global row numbers, for ties
        self.last_key, self.last_row = self.keys[:, -1].copy(), self.rows[:, -1].copy()  # (n_users,) the slot to beat
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.pending_rows, self.flush_rows = 0, max(n_users * max_len // 2, 1 << 20)

    def add(self, users: np.ndarray, items: np.ndarray, keys: np.ndarray, first_row: int, among: np.ndarray | None = None) -> None:
        """Rows numbered ``first_row``, ``first_row + 1``, ... (global row numbers, for ties); ``among``: (n,) bool,
        the rows to consider (all when None)."""
        last_key = self.last_key.take(users)
        enter = keys > last_key
        tie = np.flatnonzero(keys == last_key)
        enter[tie] = tie + first_row < self.last_row.take(users.take(tie))
        if among is not None:
            enter &= among
        rows = np.flatnonzero(enter)
        self.pending.append((users.take(rows).astype(np.int32), items.take(rows).astype(np.int32), keys.take(rows), rows + first_row))
        self.pending_rows += len(rows)
        if self.pending_rows >= self.flush_rows:
            self._flush()

    def table(self) -> np.ndarray:
        """(n_users, max_len) item rows, most recent first; -1 = empty."""
        self._flush()
        return self.items

    def _flush(self) -> None:
        if not self.pending_rows:
            return
        users, items, keys, rows = (np.concatenate(parts) for parts in zip(*self.pending))
        self.pending, self.pending_rows = [], 0
        by_user = np.argsort(users)  # ties are settled by row number in _merge
        users, items, keys, rows = users[by_user], items[by_user], keys[by_user], rows[by_user]
        owners, starts, counts = np.unique(users, return_index=True, return_counts=True)
        block = np.cumsum(counts + self.items.shape[1]) // self.BLOCK  # (U,) block of each owner
        edges = np.flatnonzero(np.diff(block)) + 1
        for first, last in zip(np.r_[0, edges], np.r_[edges, len(owners)]):
            span = slice(starts[first], starts[last - 1] + counts[last - 1])
            self._merge(owners[first:last], np.repeat(np.arange(last - first), counts[first:last]), items[span], keys[span], rows[span])

    def _merge(self, owners: np.ndarray, owner: np.ndarray, items: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> None:
        """Merges new rows (``owner``: position in ``owners``) into the kept slots of ``owners``."""
        max_len = self.items.shape[1]
        owner = np.concatenate([np.repeat(np.arange(len(owners)), max_len), owner])  # (U*L + n,) kept slots first
        all_keys = np.concatenate([self.keys[owners].ravel(), keys])
        all_items = np.concatenate([self.items[owners].ravel(), items])
        all_rows = np.concatenate([self.rows[owners].ravel(), rows])
        order = np.lexsort((all_rows, -all_keys, owner))
        owner_sorted = owner[order]
        starts = np.searchsorted(owner_sorted, np.arange(len(owners)))
        keep = order[np.arange(len(order)) - starts[owner_sorted] < max_len]  # exactly L per owner
        self.items[owners] = all_items[keep].reshape(-1, max_len)
        self.keys[owners] = all_keys[keep].reshape(-1, max_len)
        self.rows[owners] = all_rows[keep].reshape(-1, max_len)
        self.last_key[owners], self.last_row[owners] = self.keys[owners, -1], self.rows[owners, -1]


def recency_keys(chunk: Chunk, seed: int) -> np.ndarray:
    """(n,) the order of a chunk's rows within their user's history: the timestamp, or without one a
    seeded hash of the row's position, so each user's history is a random subset of their items."""
    if chunk.times is not None:
        return chunk.times
    rows = np.arange(chunk.offset, chunk.offset + len(chunk.users), dtype=np.uint64)
    return (mix64(rows ^ np.uint64(seed)) >> np.uint64(11)).astype(np.float64)


def serving_scan(shards: InteractionShards, n_users: int, history_len: int | None, seed: int, read_rows: int = 1 << 20) -> ServingScan:
    """One more streaming pass, for export: every interaction (all splits) and each user's latest items."""
    users, items, times = [], [], []
    recent = RecentItems(n_users, history_len) if history_len else None
    for chunk in shards.chunks(read_rows=read_rows):
        users.append(chunk.users.astype(np.int64))
        items.append(chunk.items.astype(np.int64))
        times.append(chunk.times.astype(np.float64) if chunk.times is not None else np.zeros(len(chunk.users)))
        if recent:
            recent.add(chunk.users, chunk.items, recency_keys(chunk, seed), chunk.offset)
    empty = [np.zeros(0, dtype=np.int64)]
    return ServingScan(np.concatenate(users + empty), np.concatenate(items + empty), np.concatenate(times + [np.zeros(0)]),
                       recent.table() if recent else None)


def scan(
    shards: InteractionShards,
    labels: Callable[[Chunk], np.ndarray],
    n_users: int,
    n_items: int,
    sample: np.ndarray,
    history_len: int | None,
    seed: int,
    read_rows: int = 1 << 18,
) -> ShardScan:
    """Streams every row once, last row group first, read ahead in a background thread.

    Logs are mostly written in time order, so read backwards a user's latest items are kept early and
    their older rows fail one comparison (``RecentItems.add``) instead of being merged.

    Args:
        labels: a chunk's (n,) int8 split codes (0 train, 1 val, 2 test).
        sample: (n_users,) bool, the users whose rows are kept for evaluation.
        history_len: keep each user's most recent items (by timestamp; without one, a seeded
            random choice) when not None.
    """
    split_counts = np.zeros(3, dtype=np.int64)
    user_counts = np.zeros(n_users, dtype=np.int64)
    item_counts = np.zeros(n_items, dtype=np.int64)
    train_masks: list[np.ndarray] = [np.zeros(0, dtype=np.uint8)] * len(shards.row_groups)
    group_parts: list[np.ndarray] = []  # the row group being read (its chunks come in order, one group at a time)
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    recent = {s: RecentItems(n_users, history_len) for s in ("val", "test")} if history_len else None
    last_first = range(len(shards.row_groups) - 1, -1, -1)
    for chunk in prefetched(lambda: shards.chunks(last_first, read_rows=read_rows, times=recent is not None), depth=4):
        codes = labels(chunk)
        split_counts += np.bincount(codes, minlength=3)
        train = codes == TRAIN
        user_counts += np.bincount(chunk.users[train], minlength=n_users)
        item_counts += np.bincount(chunk.items[train], minlength=n_items)
        group_parts.append(train)
        if chunk.offset + len(train) == shards.row_groups[chunk.row_group].offset + shards.row_groups[chunk.row_group].rows:
            train_masks[chunk.row_group] = np.packbits(np.concatenate(group_parts))
            group_parts = []
        sampled = sample[chunk.users]
        kept.append((chunk.users[sampled].astype(np.int32), chunk.items[sampled].astype(np.int32), codes[sampled]))
        if recent:
            keys = recency_keys(chunk, seed)
            recent["val"].add(chunk.users, chunk.items, keys, chunk.offset, among=train)
            recent["test"].add(chunk.users, chunk.items, keys, chunk.offset, among=codes != TEST)
    users, items, splits = (np.concatenate(parts) for parts in zip(*kept))
    history = {s: r.table() for s, r in recent.items()} if recent else None
    return ShardScan(split_counts, user_counts, item_counts, train_masks, {"users": users, "items": items, "splits": splits}, history)
