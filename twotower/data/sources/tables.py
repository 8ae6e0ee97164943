"""Your own interactions/users/items tables from parquet or csv, columns named in the data YAML."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from twotower.data.tables import ITEM, SPLIT, SPLITS, TIME, USER, Tables, merge_repeats, read_table, renamed_columns


class TableSource:
    """Reads interactions plus optional users/items tables.

    Args:
        interactions: one file (or parquet directory) of all interactions, or ``None`` when a
            predefined split is given as ``train``/``val``/``test`` files.
        users, items: tables keyed by ``user_id`` / ``item_id``; when absent, the ids seen in the
            interactions form a table with no other columns.
        user_id, item_id, timestamp, split: column names in your files (renamed to the standard ones).
        train, val, test: a predefined split as separate interaction files.

    What you wrote is what the model sees: csv/tsv columns are read as strings exactly as written
    (ids '007' stay '007'; numeric features and timestamps are parsed where used); parquet integer
    ids become their decimal strings and integral float ids their integer strings (non-integral
    float ids are refused). Timestamps become Unix seconds (datetime columns of any unit or time
    zone are converted; numbers beyond 1e11 are refused as milli/micro/nanoseconds, see
    ``tables.timestamp_seconds``). Repeated (user, item) rows are merged into one (the latest, else
    the first; per split when the split is predefined) before splitting, so no pair is in both
    train and test; the count is logged.
    """

    def __init__(
        self,
        interactions: str | None = None,
        users: str | None = None,
        items: str | None = None,
        user_id: str = USER,
        item_id: str = ITEM,
        timestamp: str | None = None,
        split: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
    ):
        split_files = {"train": train, "val": val, "test": test}
        if interactions is None and not all(split_files.values()):
            raise ValueError("give either 'interactions' or all of 'train', 'val' and 'test' interaction files")
        if interactions is not None and any(split_files.values()):
            raise ValueError("give either 'interactions' or 'train'/'val'/'test' files, not both")
        self.interactions, self.split_files = interactions, split_files
        self.users, self.items = users, items
        roles = {USER: user_id, ITEM: item_id, TIME: timestamp, SPLIT: split}
        named = [(role, column) for role, column in roles.items() if column]
        for n, (role, column) in enumerate(named):
            other = next((r for r, c in named[:n] if c == column), None)
            if other is not None:
                raise ValueError(f"data.source.{other} and data.source.{role} both name column '{column}'")
        self.columns = {column: role for role, column in named}

    def load(self) -> Tables:
        if self.interactions is not None:
            interactions = self._read_interactions(self.interactions)
            name = str(self.interactions)
        else:
            parts = []
            for part in SPLITS:
                frame = self._read_interactions(self.split_files[part])
                parts.append(frame.assign(**{SPLIT: part}))
            interactions = pd.concat(parts, ignore_index=True)
            name = "interactions (" + ", ".join(str(self.split_files[p]) for p in SPLITS) + ")"
        users = self._read_entities(self.users, {k: v for k, v in self.columns.items() if v == USER}, interactions[USER])
        items = self._read_entities(self.items, {k: v for k, v in self.columns.items() if v == ITEM}, interactions[ITEM])
        names = {"interactions": name, "users": str(self.users or "users (from interactions)"), "items": str(self.items or "items (from interactions)")}
        tables = Tables(interactions, users, items, names).validate({standard: column for column, standard in self.columns.items()})
        tables.interactions = merge_repeats(tables.interactions, name)
        return tables

    def _read_interactions(self, path: str) -> pd.DataFrame:
        frame = read_table(path, text=True)
        return renamed_columns(frame, self.columns, str(path))

    @staticmethod
    def _read_entities(path: str | None, rename: dict[str, str], ids: pd.Series) -> pd.DataFrame:
        (key,) = rename.values()
        if path is None:
            return pd.DataFrame({key: ids.drop_duplicates().reset_index(drop=True)})
        frame = read_table(Path(path), text=True)
        return renamed_columns(frame, rename, str(path))

