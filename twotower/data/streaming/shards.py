"""Interactions as a directory of parquet shards: checked from metadata, planned by row group, streamed.

Nothing here holds more than one record batch of interactions: schemas and row counts come from
the parquet footers, ranks are given contiguous runs of row groups, and rows are read in record
batches of the needed columns only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower.data.tables import ITEM, MAX_TIMESTAMP_SECONDS, SPLIT, SPLITS, TIME, TOO_LARGE_TIMESTAMP, USER


@dataclass(frozen=True)
class RowGroup:
    """One row group of one shard; ``offset`` is the global number of its first row (files sorted)."""

    file: int
    index: int
    rows: int
    offset: int


@dataclass
class Chunk:
    """One record batch as entity rows: ``users``/``items`` index the users/items tables."""

    row_group: int  # position in ``InteractionShards.row_groups``
    offset: int  # global row number of the first row
    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    times: np.ndarray | None  # (n,) float64, larger = more recent
    splits: np.ndarray | None  # (n,) int8 index into SPLITS, from the split column


class IdRows:
    """Maps a shard's id column to rows of the users or items table (whose ids are string keys)."""

    def __init__(self, keys: pd.Index, table: str):
        self.keys, self.table = keys, table
        self._int_rows: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, column: pa.Array) -> np.ndarray:
        """(n,) int64 rows; -1 where the id is not in the table."""
        if pa.types.is_integer(column.type):
            ids = column.to_numpy()
            if ids.dtype == np.uint64:  # ids past int64's range are in no table (keys have at most 18 digits)
                return np.where(ids > np.iinfo(np.int64).max, -1, self._integer_rows()(ids.astype(np.int64)))
            return self._integer_rows()(ids.astype(np.int64, copy=False))
        # Strings: look up each distinct id of the batch once, not each row.
        encoded = pc.dictionary_encode(column)
        found = self.keys.get_indexer(encoded.dictionary.to_pandas())
        return found[encoded.indices.to_numpy()] if len(found) else np.full(len(column), -1)

    def _integer_rows(self) -> Callable[[np.ndarray], np.ndarray]:
        """Integer ids -> rows, for the keys that are canonical integers ("12", not "012"): one ``take`` per
        id from a table spanning the keys' range when that is dense, else a hash lookup."""
        if self._int_rows is None:
            keys = pd.Series(np.asarray(self.keys, dtype=object))
            integral = keys.str.fullmatch(r"-?\d{1,18}").fillna(False).to_numpy(dtype=bool)
            values = keys[integral].astype("int64")
            canonical = (values.astype(str) == keys[integral]).to_numpy()
            values, rows = values.to_numpy()[canonical], np.flatnonzero(integral)[canonical]
            if len(values) and int(values.max()) - int(values.min()) < 4 * len(values) + 1024:
                self._int_rows = DenseRows(values, rows)
            else:
                index = pd.Index(values)

                def lookup(ids: np.ndarray) -> np.ndarray:
                    found = index.get_indexer(ids)
                    hit = found >= 0
                    found[hit] = rows[found[hit]]
                    return found

                self._int_rows = lookup
        return self._int_rows


class DenseRows:
    """Integer ids -> rows through a table indexed by ``id - smallest id`` (-1 = no such id); ids that are
    already their rows (0..n-1 in table order) are returned as they are, after a range check."""

    def __init__(self, ids: np.ndarray, rows: np.ndarray):
        self.low, self.high = int(ids.min()), int(ids.max())
        self.table = np.full(self.high - self.low + 1, -1, dtype=np.int64)
        self.table[ids - self.low] = rows
        self.identity = self.low == 0 and np.array_equal(self.table, np.arange(len(self.table)))

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """(n,) int64 ids -> (n,) int64 rows."""
        if len(ids) and ids.min() >= self.low and ids.max() <= self.high:
            return ids if self.identity else self.table.take(ids - self.low)
        inside = (ids >= self.low) & (ids <= self.high)
        return np.where(inside, self.table.take(np.where(inside, ids - self.low, 0)), -1)


class InteractionShards:
    """The ``*.parquet`` files of a directory (sorted by name), checked from their footers.

    Args:
        directory: the shard directory.
        user_id, item_id, timestamp, split: column names in the shards (``timestamp``/``split`` optional).
        user_keys, item_keys: the users and items tables' ids (string keys), to map ids to rows.
        names: where the users and items tables came from, for errors.
        read_rows: rows per record batch read.
    """

    def __init__(
        self,
        directory: str | Path,
        user_keys: pd.Index,
        item_keys: pd.Index,
        names: dict[str, str],
        user_id: str = USER,
        item_id: str = ITEM,
        timestamp: str | None = None,
        split: str | None = None,
        read_rows: int = 65536,
    ):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"interaction shard directory {self.directory} does not exist (or is not a directory)")
        self.files = sorted(self.directory.glob("*.parquet"))
        if not self.files:
            raise ValueError(f"interaction shard directory {self.directory} has no *.parquet files")
        self.columns = {USER: user_id, ITEM: item_id}
        if timestamp:
            self.columns[TIME] = timestamp
        if split:
            self.columns[SPLIT] = split
        self.read_rows = read_rows
        self.ids = {USER: IdRows(user_keys, names["users"]), ITEM: IdRows(item_keys, names["items"])}
        self.row_groups = self._plan()
        self.num_rows = sum(g.rows for g in self.row_groups)
        if self.num_rows == 0:
            raise ValueError(f"interaction shard directory {self.directory}: its {len(self.files)} file(s) have no rows")

    @property
    def has_times(self) -> bool:
        return TIME in self.columns

    @property
    def has_split(self) -> bool:
        return SPLIT in self.columns

    def _plan(self) -> list[RowGroup]:
        """Every row group with its row count, from the footers; checks each file's columns and types."""
        groups, offset = [], 0
        for number, path in enumerate(self.files):
            try:
                metadata = pq.ParquetFile(path).metadata
            except (OSError, pa.ArrowException) as err:
                raise ValueError(f"interaction shard {path} could not be read as parquet: {err}") from None
            self._check_schema(path, metadata.schema.to_arrow_schema())
            for index in range(metadata.num_row_groups):
                rows = metadata.row_group(index).num_rows
                if rows:
                    groups.append(RowGroup(number, index, rows, offset))
                    offset += rows
        return groups

    def _check_schema(self, path: Path, schema: pa.Schema) -> None:
        for standard, column in self.columns.items():
            if schema.get_field_index(column) < 0:
                raise ValueError(f"interaction shard {path} has no column '{column}' (columns: {schema.names})")
            kind = _value_type(schema.field(column).type)
            allowed = {USER: _is_id, ITEM: _is_id, TIME: _is_time, SPLIT: _is_string}[standard]
            if not allowed(kind):
                wanted = {USER: "integer or string ids", ITEM: "integer or string ids", TIME: "numbers or timestamps", SPLIT: "strings train/val/test"}[standard]
                raise ValueError(f"interaction shard {path}: column '{column}' has type {schema.field(column).type}; expected {wanted}")

    def assign(self, rank: int, world_size: int) -> list[int]:
        """The row groups of ``rank``: a contiguous run holding about 1/world_size of the rows.

        A row group goes to the rank whose share of the rows holds its middle row, so shares
        differ by at most one row group and each rank opens only a few files.
        """
        middles = np.array([g.offset + g.rows / 2 for g in self.row_groups])
        owner = np.minimum((middles * world_size / self.num_rows).astype(int), world_size - 1)
        return np.flatnonzero(owner == rank).tolist()

    def chunks(self, row_groups: Sequence[int] | None = None, read_rows: int | None = None, times: bool = True, splits: bool = True) -> Iterator[Chunk]:
        """Record batches (of ``read_rows``, default the source's) of the given row groups (all, in
        order, when None), ids checked and mapped to rows; ``times=False`` / ``splits=False`` leave the
        timestamp / split column unread."""
        order = range(len(self.row_groups)) if row_groups is None else row_groups
        columns = [name for key, name in self.columns.items() if (times or key != TIME) and (splits or key != SPLIT)]
        file, reader = None, None
        for position in order:
            group = self.row_groups[position]
            if group.file != file:
                file, reader = group.file, pq.ParquetFile(self.files[group.file])
            offset = group.offset
            for batch in reader.iter_batches(batch_size=read_rows or self.read_rows, row_groups=[group.index], columns=columns):
                yield self._chunk(batch, position, offset)
                offset += batch.num_rows

    def _chunk(self, batch: pa.RecordBatch, position: int, offset: int) -> Chunk:
        path = self.files[self.row_groups[position].file]
        rows = {}
        for key in (USER, ITEM):
            column = _decoded(batch.column(self.columns[key]))
            _no_nulls(column, path, self.columns[key], offset)
            rows[key] = self.ids[key](column)
            if len(column) and rows[key].min() < 0:  # one pass, no mask (a third of `(rows < 0).any()`'s time)
                unknown = rows[key] < 0
                values = pd.unique(column.filter(pa.array(unknown)).to_numpy(zero_copy_only=False))[:5].tolist()
                raise ValueError(
                    f"interaction shard {path}: column '{self.columns[key]}' names {int(unknown.sum())} row(s) with id(s) "
                    f"not in {self.ids[key].table}, e.g. {values} (first at row {offset + int(np.argmax(unknown))} of the directory)"
                )
        times = splits = None
        if self.has_times and self.columns[TIME] in batch.schema.names:
            column = _decoded(batch.column(self.columns[TIME]))
            _no_nulls(column, path, self.columns[TIME], offset)
            times = _unix_seconds(column)
            if not np.isfinite(times).all():
                raise ValueError(f"interaction shard {path}: column '{self.columns[TIME]}' has NaN or infinity, first at row "
                                 f"{offset + int(np.argmax(~np.isfinite(times)))} of the directory")
            large = np.abs(times) > MAX_TIMESTAMP_SECONDS
            if large.any():
                first = int(np.argmax(large))
                raise ValueError(f"interaction shard {path}: column '{self.columns[TIME]}' has the value {column[first].as_py()!r} at row "
                                 f"{offset + first} of the directory, {TOO_LARGE_TIMESTAMP}")
        if self.has_split and self.columns[SPLIT] in batch.schema.names:
            column = _decoded(batch.column(self.columns[SPLIT]))
            found = pc.index_in(column, value_set=pa.array(SPLITS))
            bad = found.is_null().to_numpy(zero_copy_only=False)
            if bad.any():
                values = pd.unique(column.filter(pa.array(bad)).to_numpy(zero_copy_only=False))[:5].tolist()
                raise ValueError(f"interaction shard {path}: column '{self.columns[SPLIT]}' has value(s) {values} (allowed: {SPLITS})")
            splits = found.to_numpy().astype(np.int8)
        return Chunk(position, offset, rows[USER], rows[ITEM], times, splits)


def _unix_seconds(column: pa.Array) -> np.ndarray:
    """(n,) float64 Unix seconds of a timestamp column (any unit; UTC where it has a zone), a date column (days), or numbers (seconds already)."""
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
        return column.cast(pa.int64()).to_numpy().astype(np.float64) / per_second
    if pa.types.is_date(column.type):
        return column.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.float64) * 86400.0
    return column.to_numpy().astype(np.float64)


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_id(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or _is_string(kind)


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_time(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind)


def _decoded(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _no_nulls(column: pa.Array, path: Path, name: str, offset: int) -> None:
    if column.null_count:
        first = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise ValueError(f"interaction shard {path}: column '{name}' has {column.null_count} missing value(s), first at row {offset + first} of the directory")


@dataclass
class ShardedTables:
    """Users and items in memory; interactions as shards, streamed (never one DataFrame)."""

    interactions: InteractionShards
    users: pd.DataFrame
    items: pd.DataFrame
    names: dict[str, str]
