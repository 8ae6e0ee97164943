"""The three tables every source produces, with their checks, and reading parquet/csv files."""
from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
SPLIT = "split"
SPLITS = ("train", "val", "test")


@dataclass
class Tables:
    """Interactions (user_id, item_id[, timestamp][, split]) plus users and items tables keyed by id.

    ``names`` says where each table came from, so errors can name the file.
    """

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    names: dict[str, str]

    def validate(self) -> "Tables":
        """Check keys and references; raises ValueError naming the table, column and values."""
        for table, key in (("interactions", USER), ("interactions", ITEM), ("users", USER), ("items", ITEM)):
            frame = getattr(self, table)
            require_columns(frame, [key], self.names[table])
            if frame.empty:
                raise ValueError(f"{self.names[table]} is empty")
            missing = frame[key].isna()
            if missing.any():
                raise ValueError(f"{self.names[table]}: column '{key}' has {int(missing.sum())} missing value(s), first at row {int(missing.idxmax())}")
        # Ids become string keys everywhere, so csv ints, parquet strings and floats read from a
        # csv with gaps ("7.0") all name the same entity.
        for table, key in (("interactions", USER), ("interactions", ITEM), ("users", USER), ("items", ITEM)):
            frame = getattr(self, table)
            frame[key] = id_keys(frame[key])
        for table, key in (("users", USER), ("items", ITEM)):
            frame = getattr(self, table)
            dupes = frame[key][frame[key].duplicated()]
            if len(dupes):
                raise ValueError(f"{self.names[table]}: column '{key}' repeats id(s) {dupes.unique()[:5].tolist()}")
        for table, key in (("users", USER), ("items", ITEM)):
            unknown = ~self.interactions[key].isin(getattr(self, table)[key])
            if unknown.any():
                values = self.interactions.loc[unknown, key].unique()[:5].tolist()
                raise ValueError(
                    f"{self.names['interactions']}: column '{key}' names {int(unknown.sum())} row(s) with id(s) "
                    f"not in {self.names[table]}, e.g. {values}"
                )
        if TIME in self.interactions:
            times = pd.to_numeric(self.interactions[TIME], errors="coerce")
            if times.isna().any():
                row = int(times.isna().idxmax())
                raise ValueError(f"{self.names['interactions']}: column '{TIME}' has a missing or non-numeric value at row {row}: {self.interactions[TIME].iloc[row]!r}")
            self.interactions[TIME] = times
        if SPLIT in self.interactions:
            bad = ~self.interactions[SPLIT].isin(SPLITS)
            if bad.any():
                raise ValueError(f"{self.names['interactions']}: column '{SPLIT}' has value(s) {self.interactions.loc[bad, SPLIT].unique()[:5].tolist()} (allowed: {SPLITS})")
        return self


def id_keys(ids: pd.Series) -> pd.Series:
    """Ids as strings; integral floats lose their '.0'."""
    if pd.api.types.is_float_dtype(ids) and (ids % 1 == 0).all():
        ids = ids.astype("int64")
    return ids.astype(str)


def require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing} (columns: {list(frame.columns)})")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet or csv/tsv file, or a directory of parquet shards; clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table file {path} does not exist")
    suffixes = "".join(path.suffixes).lower()
    try:
        if path.is_dir() or ".parquet" in suffixes:
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(path)
        elif suffixes.endswith((".tsv", ".tsv.gz")):
            frame = pd.read_csv(path, sep="\t")
        else:
            raise ValueError(f"table file {path}: unknown format '{suffixes}' (use .parquet, .csv or .tsv)")
    except pd.errors.EmptyDataError:
        raise ValueError(f"table file {path} is empty") from None
    except UnicodeDecodeError:
        raise ValueError(not_utf8(path, "\t" if ".tsv" in suffixes else ",")) from None
    except (OSError, pd.errors.ParserError, pa.ArrowException) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"table file {path} could not be read: {err}") from None
    if frame.empty:
        raise ValueError(f"table file {path} has no rows")
    return frame


def not_utf8(path: Path, sep: str, columns: Sequence[str] | None = None) -> str:
    """Where a delimited text file stops being UTF-8: line, column (``columns``, else the header) and the bad byte."""
    if path.suffix == ".gz":
        with gzip.open(path) as file:
            raw = file.read()
    else:
        raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        return f"table file {path} is not UTF-8"
    except UnicodeDecodeError as err:
        start = err.start
    line_start = raw.rfind(b"\n", 0, start) + 1
    line_end = raw.find(b"\n", start)
    line = raw[line_start : line_end if line_end >= 0 else len(raw)].decode("utf-8", "replace")
    header = raw[: raw.find(b"\n") if b"\n" in raw else len(raw)].decode("utf-8", "replace")
    fields = _fields(line, sep)
    names = list(columns) if columns is not None else _fields(header, sep)
    where = next((i for i, f in enumerate(fields) if "\ufffd" in f), None)
    column = f", column '{names[where]}'" if where is not None and where < len(names) else ""
    value = f" (value {fields[where]!r})" if where is not None else ""
    line_number = raw.count(b"\n", 0, start) + 1
    return (f"table file {path} is not UTF-8: byte 0x{raw[start]:02x} at line {line_number}{column}{value}; "
            "re-save the file as UTF-8")


def _fields(line: str, sep: str) -> list[str]:
    try:
        return next(csv.reader([line.rstrip("\r")], delimiter=sep), [])
    except csv.Error:  # a stray carriage return or quote: no column to name
        return []
