"""Vocabularies: values to contiguous indices, index 0 reserved for out-of-vocabulary / missing."""
from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

OOV = 0
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: Any) -> list[str]:
    """Lower-cased alphanumeric word tokens; missing text gives no tokens."""
    if not isinstance(text, str):
        return []
    return _TOKEN.findall(text.lower())


def split_tags(value: Any, separator: str | None) -> list[str]:
    """A multi-hot cell as a list of tags: a list/array as is, or a string split on ``separator``."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        # Nulls inside a list cell ([None], [nan]) are no tag; numbers are keyed like ids (1.0 -> '1').
        tags = (_key(v) for v in value if not (v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v))))
        return [t for t in tags if t]
    text = value if isinstance(value, str) else _key(value)
    if not text:
        return []
    return [t for t in (t.strip() for t in text.split(separator)) if t] if separator else [text]


def hashed_ids(lists: Iterable[list[str]], buckets: int, max_len: int) -> np.ndarray:
    """Ragged token lists as a (n, max_len) matrix of ids 1..buckets (crc32 of the token, stable
    across processes and Python versions), 0-padded on the right."""
    lists = list(lists)
    out = np.zeros((len(lists), max_len), dtype=np.int64)
    for row, tokens in enumerate(lists):
        ids = [1 + zlib.crc32(t.encode("utf-8")) % buckets for t in tokens[:max_len]]
        out[row, : len(ids)] = ids
    return out


class Vocabulary:
    """Maps values (as strings) to 1..n; unseen, rare and missing values map to ``OOV`` (0)."""

    def __init__(self, values: Sequence[str]):
        self.values: list[str] = list(values)
        if len(set(self.values)) != len(self.values):
            raise ValueError("vocabulary values must be unique")
        self._positions_index: pd.Index | None = None

    def __len__(self) -> int:
        """Number of rows an embedding table needs, OOV included."""
        return len(self.values) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.values == self.values

    @classmethod
    def fit(cls, values: Iterable[Any], min_count: int = 1) -> Vocabulary:
        # Most frequent first, ties broken by value, so fitting is deterministic.
        codes, keys = _factorized_keys(values)
        counts = np.bincount(codes[codes >= 0], minlength=len(keys))
        # Distinct values can share a key (7, 7.0 and "7"): their counts add up.
        counts = pd.Series(counts).groupby(np.asarray(keys, dtype=object), sort=False).sum()
        return cls.from_counts(counts.index.to_numpy(dtype=object), counts.to_numpy(), min_count)

    @classmethod
    def from_counts(cls, keys: Sequence[str], counts: np.ndarray, min_count: int = 1) -> Vocabulary:
        """The vocabulary ``fit`` gives for values whose (string) keys occur ``counts`` times."""
        keys, counts = np.asarray(keys, dtype=object), np.asarray(counts)
        kept = counts >= max(min_count, 1)
        keys, counts = keys[kept], counts[kept]
        return cls(keys[np.lexsort((keys, -counts))].tolist())

    def lookup(self, values: Iterable[Any]) -> np.ndarray:
        codes, keys = _factorized_keys(values)
        if not len(keys):
            return np.zeros(len(codes), dtype=np.int64)
        found = self._positions().get_indexer(keys) + 1  # -1 (not found) -> OOV
        return np.where(codes >= 0, found[codes], OOV).astype(np.int64)

    def lookup_lists(self, lists: Iterable[list[str]], max_len: int) -> np.ndarray:
        """Ragged lists of values as a (n, max_len) index matrix, 0-padded on the right; unknown values dropped."""
        lists = list(lists)
        out = np.zeros((len(lists), max_len), dtype=np.int64)
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        found = self._positions().get_indexer(list(itertools.chain.from_iterable(lists))) + 1  # (total,)
        row = np.repeat(np.arange(len(lists)), lengths)
        known = found != OOV
        row, found = row[known], found[known]
        position = np.arange(len(row)) - np.searchsorted(row, row)  # place among the row's known values
        fits = position < max_len
        out[row[fits], position[fits]] = found[fits]
        return out

    def _positions(self) -> pd.Index:
        """The values as an index (position = vocabulary index - 1), built on first use."""
        if self._positions_index is None:
            self._positions_index = pd.Index(self.values, dtype=object)
        return self._positions_index

    def to_json(self) -> list[str]:
        return list(self.values)

    @classmethod
    def from_json(cls, values: list[str]) -> Vocabulary:
        return cls(values)


def _factorized_keys(values: Iterable[Any]) -> tuple[np.ndarray, list[str]]:
    """(n,) codes (-1 = missing) into the distinct values' keys: hashing runs in pandas, and
    ``_key`` only once per distinct value."""
    if isinstance(values, pd.Series):
        array = values.to_numpy(dtype=object)
    else:
        items = list(values)
        array = np.empty(len(items), dtype=object)
        array[:] = items
    codes, uniques = pd.factorize(array, use_na_sentinel=True)
    return codes, [_key(v) for v in uniques]


def _key(value: Any) -> str:
    # Integral floats (ids read from csv with missing values) and ints share one key.
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)
