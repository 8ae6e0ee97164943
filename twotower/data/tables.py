"""The three tables every source produces, with their checks, and reading parquet/csv files."""
from __future__ import annotations

import csv
import gzip
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
SPLIT = "split"
SPLITS = ("train", "val", "test")
# The label of a row a split leaves out, neither trained on nor evaluated (temporal_warm's test rows of
# users without training history). Not one of SPLITS: a split column in a file cannot hold it.
EXCLUDED = "excluded"
# Unix seconds beyond this (year 5138) are taken for milliseconds/microseconds/nanoseconds and refused.
MAX_TIMESTAMP_SECONDS = 1e11


@dataclass
class Tables:
    """Interactions (user_id, item_id[, timestamp][, split]) plus users and items tables keyed by id.

    ``names`` says where each table came from, so errors can name the file; ``file_columns`` (set by
    ``validate``) what the files call the standard columns, so errors can name the column as written.
    """

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    names: dict[str, str]
    file_columns: dict[str, str] = field(default_factory=dict, kw_only=True)

    def validate(self, file_columns: Mapping[str, str] | None = None) -> Tables:
        """Check keys and references; raises ValueError naming the table, column and values.

        ``file_columns``: the standard columns' names in the files (``TableSource`` renames ``uid`` to ``user_id``,
        ...), so an error names the column the user wrote."""
        self.file_columns = dict(file_columns or {})
        named = {key: self.column_label(key) for key in (USER, ITEM, TIME, SPLIT)}
        for table, key in (("interactions", USER), ("interactions", ITEM), ("users", USER), ("items", ITEM)):
            frame = getattr(self, table)
            require_columns(frame, [key], self.names[table])
            if frame.empty:
                raise ValueError(f"{self.names[table]} is empty")
            missing = frame[key].isna()
            if missing.any():
                raise ValueError(f"{self.names[table]}: column {named[key]} has {int(missing.sum())} missing value(s), first at row {int(missing.idxmax())}")
        # Ids become string keys everywhere (see id_keys): csv text as written, parquet ints and
        # integral floats as their integer strings.
        for table, key in (("interactions", USER), ("interactions", ITEM), ("users", USER), ("items", ITEM)):
            frame = getattr(self, table)
            frame[key] = id_keys(frame[key], f"{self.names[table]}: column {named[key]}")
        for table, key in (("users", USER), ("items", ITEM)):
            frame = getattr(self, table)
            dupes = frame[key][frame[key].duplicated()]
            if len(dupes):
                raise ValueError(f"{self.names[table]}: column {named[key]} repeats id(s) {dupes.unique()[:5].tolist()}")
        for table, key in (("users", USER), ("items", ITEM)):
            unknown = ~self.interactions[key].isin(getattr(self, table)[key])
            if unknown.any():
                values = self.interactions.loc[unknown, key].unique()[:5].tolist()
                hint = ""
                if any(isinstance(v, str) and v.endswith(".0") and v[:-2].lstrip("-").isdigit() for v in values):
                    hint = " (csv ids are read exactly as written, so '7.0' and '7' are different ids: write integer ids without '.0')"
                raise ValueError(
                    f"{self.names['interactions']}: column {named[key]} names {int(unknown.sum())} row(s) with id(s) "
                    f"not in {self.names[table]}, e.g. {values}{hint}"
                )
        if TIME in self.interactions:
            self.interactions[TIME] = timestamp_seconds(self.interactions[TIME], self.names["interactions"], self.file_columns.get(TIME, TIME), TIME)
        if SPLIT in self.interactions:
            bad = ~self.interactions[SPLIT].isin(SPLITS)
            if bad.any():
                raise ValueError(f"{self.names['interactions']}: column {named[SPLIT]} has value(s) {self.interactions.loc[bad, SPLIT].unique()[:5].tolist()} (allowed: {SPLITS})")
        return self

    def column_label(self, key: str) -> str:
        """How an error names the standard column ``key``: as the file names it (``'ts' (timestamp)``)."""
        return column_label(self.file_columns.get(key, key), key)


def column_label(column: str, role: str) -> str:
    """How an error names a column: as the file names it, with its role where that differs (``'ts' (timestamp)``)."""
    return f"'{column}'" if column == role else f"'{column}' ({role})"


def id_keys(ids: pd.Series, where: str = "ids") -> pd.Series:
    """Ids as string keys, the same keys ``vocab._key`` gives at serving time.

    Strings stay exactly as they are ('007' stays '007'); integers become their decimal strings;
    integral floats become their integer strings, without overflow (1e20 -> '100000000000000000000').

    Raises:
        ValueError: an id is empty, a non-integral or infinite float, or not a string or number; names ``where`` and the value.
    """
    if ids.dtype == object or pd.api.types.is_float_dtype(ids) or pd.api.types.is_string_dtype(ids):
        try:
            codes, uniques = pd.factorize(ids, use_na_sentinel=True)
        except TypeError:  # an unhashable cell (a list or an array from a parquet list column, a dict): name it
            row, value = next((row, v) for row, v in enumerate(ids.tolist()) if not _hashable(v))
            shown = value.tolist() if isinstance(value, np.ndarray) else value
            raise ValueError(f"{where} has the id {shown!r} of type {type(shown).__name__} at row {row}; ids are strings or integers") from None
        keys = np.array([_id_key(v, where) for v in uniques] + [None], dtype=object)
        empty = np.flatnonzero(keys[:-1] == "")
        if len(empty):  # serving pads short answers with '': an item of that id would read as padding
            raise ValueError(f"{where} has an empty id '' at row {int(np.argmax(codes == empty[0]))}; ids are non-empty")
        return pd.Series(keys[codes], index=ids.index, name=ids.name)
    return ids.astype(str)


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _id_key(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where} has the boolean id {value!r}; ids are strings or integers")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        raise ValueError(f"{where} has the id {float(value)!r}, which is not a whole number; "
                         "store ids as strings or integers")
    raise ValueError(f"{where} has the id {value!r} of type {type(value).__name__}; ids are strings or integers")


def timestamp_seconds(times: pd.Series, name: str, column: str = TIME, role: str | None = None, allow_missing: bool = False) -> pd.Series:
    """Timestamps as Unix seconds (float64).

    datetime64 columns of any unit (parquet keeps microseconds or milliseconds) and tz-aware ones
    are converted to seconds since 1970-01-01 UTC. Numbers (or numeric strings, from csv) are taken
    as seconds already; values beyond ``MAX_TIMESTAMP_SECONDS`` (year 5138) look like milliseconds,
    microseconds or nanoseconds and are refused, naming the column and value, rather than guessed:
    divide them by 1e3, 1e6 or 1e9, or store a datetime column.

    Args:
        name: the table, for errors; ``column``: the column ``times`` is, for errors, and ``role`` what it stands for
            (``timestamp``) where the file names it otherwise.
        allow_missing: missing cells (None, NaN, NaT) become NaN instead of an error; a cell that is
            there but not a time is refused all the same.

    Raises:
        ValueError: a missing (unless allowed), non-numeric or implausibly large timestamp, naming ``name``, the column, the row and the value.
    """
    label = column_label(column, role or column)
    if isinstance(times.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(times):
        seconds = (times - pd.Timestamp(0, tz=getattr(times.dt, "tz", None))) / pd.Timedelta(seconds=1)
        seconds = seconds.astype("float64")
    else:
        seconds = pd.to_numeric(times, errors="coerce").astype("float64")
    bad = seconds.isna().to_numpy() | ~np.isfinite(seconds.to_numpy())
    if allow_missing:
        bad &= times.notna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name}: column {label} has a {'non-numeric' if allow_missing else 'missing or non-numeric'} value at row {row}: {times.iloc[row]!r}")
    large = np.abs(seconds.to_numpy()) > MAX_TIMESTAMP_SECONDS
    if large.any():
        row = int(np.argmax(large))
        raise ValueError(f"{name}: column {label} has the value {times.tolist()[row]!r} at row {row}, {TOO_LARGE_TIMESTAMP}")
    return seconds


#: Why a number beyond ``MAX_TIMESTAMP_SECONDS`` is refused, after "column 'ts' has the value 1700000000000 at row 3, ".
TOO_LARGE_TIMESTAMP = (f"beyond {MAX_TIMESTAMP_SECONDS:g} Unix seconds (year 5138): it looks like milliseconds, microseconds or "
                       "nanoseconds; timestamps are Unix seconds, so divide by 1e3, 1e6 or 1e9 (or store a datetime column)")


def merge_repeats(interactions: pd.DataFrame, name: str) -> pd.DataFrame:
    """One row per (user, item) pair (per split, when a ``split`` column is given), so a random or
    temporal split cannot put copies of one pair in train and test (a test target already known
    from training is never rankable). Keeps the row with the latest timestamp, else the first row,
    in the original row order; logs how many rows were merged."""
    keys = [USER, ITEM] + ([SPLIT] if SPLIT in interactions else [])
    if TIME in interactions:
        order = interactions.sort_values(TIME, kind="stable")
        keep = ~order.duplicated(keys, keep="last")
        kept = order[keep].sort_index()
    else:
        kept = interactions[~interactions.duplicated(keys, keep="first")]
    removed = len(interactions) - len(kept)
    if removed:
        log.info("%s: %d repeated (user, item) rows merged (kept the %s row of each pair)", name, removed,
                 "latest" if TIME in interactions else "first")
    return kept.reset_index(drop=True)


def require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing} (columns: {list(frame.columns)})")


def renamed_columns(frame: pd.DataFrame, rename: dict[str, str], name: str) -> pd.DataFrame:
    """``frame`` with the configured columns renamed to the standard ones.

    Raises:
        ValueError: a configured column is missing, or the file also has a column of the standard name
            the configured one becomes (two 'user_id' columns would follow), naming both.
    """
    require_columns(frame, list(rename), name)
    for column, role in rename.items():
        if column != role and role in frame.columns:
            raise ValueError(f"{name} has both column '{column}', read as {role}, and a column '{role}': "
                             f"rename or drop '{role}' (or read it as {role}: data.source.{role}={role})")
    return frame.rename(columns=rename)


def read_table(path: str | Path, text: bool = False) -> pd.DataFrame:
    """Read a parquet or csv/tsv file, or a directory of parquet shards; clear errors for bad files.

    ``text``: read every csv/tsv column as strings exactly as written ('007' stays '007', an
    all-digit title stays text); numeric features and timestamps are parsed where they are used.
    Empty cells (and pandas' default NA markers) are still missing. Parquet keeps its types.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table file {path} does not exist")
    suffixes = "".join(path.suffixes).lower()
    try:
        if path.is_dir() or ".parquet" in suffixes:
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(path, dtype=str if text else None)
        elif suffixes.endswith((".tsv", ".tsv.gz")):
            frame = pd.read_csv(path, sep="\t", dtype=str if text else None)
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
