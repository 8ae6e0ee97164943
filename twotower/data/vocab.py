"""Vocabularies: values to contiguous indices, index 0 reserved for out-of-vocabulary / missing."""
from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Any, Iterable, Sequence

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
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    text = str(value)
    if not text:
        return []
    return [t.strip() for t in text.split(separator)] if separator else [text]


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
        self._index = {v: i + 1 for i, v in enumerate(self.values)}
        if len(self._index) != len(self.values):
            raise ValueError("vocabulary values must be unique")

    def __len__(self) -> int:
        """Number of rows an embedding table needs, OOV included."""
        return len(self.values) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.values == self.values

    @classmethod
    def fit(cls, values: Iterable[Any], min_count: int = 1) -> "Vocabulary":
        counts = Counter(_key(v) for v in values if not _is_missing(v))
        # Most frequent first, ties broken by value, so fitting is deterministic.
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        return cls(kept)

    @classmethod
    def from_counts(cls, keys: Sequence[str], counts: np.ndarray, min_count: int = 1) -> "Vocabulary":
        """The vocabulary ``fit`` gives for values whose (string) keys occur ``counts`` times."""
        keys, counts = np.asarray(keys, dtype=object), np.asarray(counts)
        kept = counts >= max(min_count, 1)
        keys, counts = keys[kept], counts[kept]
        return cls(keys[np.lexsort((keys, -counts))].tolist())

    def lookup(self, values: Iterable[Any]) -> np.ndarray:
        return np.fromiter((self._index.get(_key(v), OOV) if not _is_missing(v) else OOV for v in values), dtype=np.int64)

    def lookup_lists(self, lists: Iterable[list[str]], max_len: int) -> np.ndarray:
        """Ragged lists of values as a (n, max_len) index matrix, 0-padded on the right."""
        lists = list(lists)
        out = np.zeros((len(lists), max_len), dtype=np.int64)
        for row, values in enumerate(lists):
            idx = [self._index.get(v, OOV) for v in values]
            idx = [i for i in idx if i != OOV][:max_len]
            out[row, : len(idx)] = idx
        return out

    def to_json(self) -> list[str]:
        return list(self.values)

    @classmethod
    def from_json(cls, values: list[str]) -> "Vocabulary":
        return cls(values)


def _is_missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _key(value: Any) -> str:
    # Integral floats (ids read from csv with missing values) and ints share one key.
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)
