"""Interactions in a directory of parquet shards, with users and items tables small enough to load whole."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from twotower.data.shards import InteractionShards
from twotower.data.tables import ITEM, USER, id_keys, read_table, require_columns


@dataclass
class ShardedTables:
    """Users and items in memory; interactions as shards, streamed (never one DataFrame)."""

    interactions: InteractionShards
    users: pd.DataFrame
    items: pd.DataFrame
    names: dict[str, str]


class ShardSource:
    """Args:
    interactions: a directory of ``*.parquet`` interaction shards.
    users, items: tables keyed by ``user_id`` / ``item_id`` (parquet, csv or tsv), loaded whole;
        every id in the shards must be in them.
    user_id, item_id, timestamp, split: column names in your files (renamed to the standard ones).
    read_rows: interaction rows per record batch read.
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
    ):
        if not users or not items:
            raise ValueError("sharded interactions need 'users' and 'items' tables (every id in the shards listed once)")
        self.interactions, self.users, self.items = interactions, users, items
        self.user_id, self.item_id, self.timestamp, self.split, self.read_rows = user_id, item_id, timestamp, split, read_rows

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
    """A users/items table with its ids as string keys; raises on a missing or repeated id."""
    frame = read_table(path)
    require_columns(frame, [column], str(path))
    frame = frame.rename(columns={column: key})
    missing = frame[key].isna()
    if missing.any():
        raise ValueError(f"{path}: column '{column}' has {int(missing.sum())} missing value(s), first at row {int(missing.to_numpy().argmax())}")
    frame[key] = id_keys(frame[key])
    dupes = frame[key][frame[key].duplicated()]
    if len(dupes):
        raise ValueError(f"{path}: column '{column}' repeats id(s) {dupes.unique()[:5].tolist()}")
    return frame
