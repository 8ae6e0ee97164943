"""Interactions in a directory of parquet shards, with users and items tables small enough to load whole."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import pandas as pd

from twotower.constraints import AT_LEAST_1
from twotower.data.prepared import Prepared
from twotower.data.schema import Schema
from twotower.data.streaming.prepare import prepare_shards
from twotower.data.streaming.shards import InteractionShards, ShardedTables
from twotower.data.tables import ITEM, USER, id_keys, read_table, renamed_columns


class ShardSource:
    """Args:
    interactions: a directory of ``*.parquet`` interaction shards.
    users, items: tables keyed by ``user_id`` / ``item_id`` (parquet, csv or tsv), loaded whole;
        every id in the shards must be in them.
    user_id, item_id, timestamp, split: column names in your files (renamed to the standard ones).
    read_rows: interaction rows per record batch read.
    eval_users: validation and test rank the catalogue for at most this many users (a seeded sample of
        ids, the same in every process); null evaluates every user, holding all their rows in memory.
    shuffle_buffer: training pairs each process shuffles among (each block of at least 1Mi pairs read is shuffled
        together with the buffer; the buffer keeps this many of them); row groups are read in a new random order each epoch.
    pin_memory: page-lock the training batches (when CUDA is available), so their copies to the GPU are asynchronous.
    """

    def __init__(
        self,
        interactions: str,
        users: str,
        items: str,
        user_id: str = USER,
        item_id: str = ITEM,
        timestamp: str | None = None,
        split: str | None = None,
        read_rows: int = 65536,
        eval_users: Annotated[int, AT_LEAST_1] | None = 10_000,
        shuffle_buffer: Annotated[int, AT_LEAST_1] = 262_144,
        pin_memory: bool = True,
    ):
        if not users or not items:
            raise ValueError("sharded interactions need 'users' and 'items' tables (every id in the shards listed once)")
        self.interactions, self.users, self.items = interactions, users, items
        if eval_users is not None and eval_users < 1:
            raise ValueError(f"eval_users={eval_users} must be >= 1 (or null: every user)")
        self.user_id, self.item_id, self.timestamp, self.split, self.read_rows = user_id, item_id, timestamp, split, read_rows
        self.eval_users, self.shuffle_buffer, self.pin_memory = eval_users, shuffle_buffer, pin_memory

    def prepare(self, schema: Schema, split: Callable, seed: int, candidates: str) -> Prepared:
        """One streamed scan of the shards (``prepare_shards``); training then streams each process's share."""
        return prepare_shards(self.load(), schema, split, seed, candidates, self.eval_users, self.shuffle_buffer, self.pin_memory)

    def load(self) -> ShardedTables:
        names = {"interactions": str(self.interactions), "users": str(self.users), "items": str(self.items)}
        users = _entities(self.users, self.user_id, USER)
        items = _entities(self.items, self.item_id, ITEM)
        shards = InteractionShards(
            self.interactions, pd.Index(users[USER]), pd.Index(items[ITEM]), names,
            self.user_id, self.item_id, self.timestamp, self.split, self.read_rows,
        )
        return ShardedTables(shards, users, items, names)


def _entities(path: str, column: str, key: str) -> pd.DataFrame:
    """A users/items table with its ids as string keys; raises on a missing or repeated id.

    csv/tsv cells are read as written, as ``TableSource`` reads them ('007' stays '007')."""
    frame = read_table(path, text=True)
    frame = renamed_columns(frame, {column: key}, str(path))
    missing = frame[key].isna()
    if missing.any():
        raise ValueError(f"{path}: column '{column}' has {int(missing.sum())} missing value(s), first at row {int(missing.to_numpy().argmax())}")
    frame[key] = id_keys(frame[key], f"{path}: column '{column}'")
    dupes = frame[key][frame[key].duplicated()]
    if len(dupes):
        raise ValueError(f"{path}: column '{column}' repeats id(s) {dupes.unique()[:5].tolist()}")
    return frame
