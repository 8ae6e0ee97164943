"""Turning table columns into tensors: vocabularies and statistics fitted on the train split only.

The fitted state is plain JSON, so an exported artifact can turn raw feature rows (a new user's
profile, a new item's content) into exactly the tensors the towers were trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from twotower.data.schema import FeatureSpec, Schema
from twotower.data.tables import ITEM, USER, require_columns
from twotower.data.vocab import Vocabulary, _key, hashed_ids, split_tags, tokenize

DEFAULT_MAX_LEN = {"text": 16, "multi_hot": 8, "history": 50}


@dataclass
class FittedFeature:
    """A feature spec plus what was learned from the train split."""

    spec: FeatureSpec
    vocab: Vocabulary | None = None
    mean: float = 0.0
    std: float = 1.0
    dim: int = 1
    max_len: int = 1

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table (OOV row included); 0 for non-embedded kinds."""
        if self.spec.hash_buckets:
            return self.spec.hash_buckets + 1
        return len(self.vocab) if self.vocab is not None else 0

    def transform(self, frame: pd.DataFrame, table: str) -> torch.Tensor:
        """The column as a tensor: (n,) int64 ids, (n, max_len) int64 tokens/tags, (n,) or (n, dim) float32."""
        spec = self.spec
        column = spec.source_column
        require_columns(frame, [column], table)
        values = frame[column]
        if spec.kind in ("categorical", "text"):
            values = text_cells(values, spec, table)
        if spec.kind in ("id", "categorical"):
            if spec.prefix:
                values = values.astype("string").str[: spec.prefix]
            return torch.from_numpy(self.vocab.lookup(values.tolist()))
        if spec.kind == "multi_hot":
            return torch.from_numpy(self.vocab.lookup_lists((split_tags(v, spec.separator) for v in values), self.max_len))
        if spec.kind == "text" and spec.hash_buckets:
            return torch.from_numpy(hashed_ids((tokenize(v) for v in values), spec.hash_buckets, self.max_len))
        if spec.kind == "text":
            return torch.from_numpy(self.vocab.lookup_lists((tokenize(v) for v in values), self.max_len))
        if spec.kind == "numeric":
            return torch.from_numpy(self._numeric(values, table))
        if spec.kind == "dense":
            return torch.from_numpy(self._dense(values, table))
        raise ValueError(f"feature '{spec.name}' of kind '{spec.kind}' is not read from a table column")

    def _numeric(self, values: pd.Series, table: str) -> np.ndarray:
        x = _as_float(values, self.spec, table)
        if self.spec.transform == "log1p":
            negative = x < 0  # NaN compares False
            if negative.any():
                row = int(np.argmax(negative))
                raise ValueError(f"{table}: column '{self.spec.source_column}' has a negative value {x[row]} at row {row}; log1p needs >= 0")
            x = np.log1p(x)
        missing = np.isnan(x)
        if missing.any():
            if self.spec.missing == "error":
                row = int(np.argmax(missing))
                raise ValueError(
                    f"{table}: numeric column '{self.spec.source_column}' has {int(missing.sum())} missing/NaN value(s), "
                    f"first at row {row} (set missing: mean or zero on feature '{self.spec.name}' to fill them)"
                )
            x = np.where(missing, self.mean if self.spec.missing == "mean" else 0.0, x)
        with np.errstate(over="ignore"):
            scaled = ((x - self.mean) / self.std).astype(np.float32)
        overflow = ~np.isfinite(scaled)
        if overflow.any():
            row = int(np.argmax(overflow))
            raise ValueError(f"{table}: numeric column '{self.spec.source_column}' value {x[row]:g} at row {row} is too far from the "
                             f"train mean {self.mean:g} (std {self.std:g}) to be a float32 feature")
        return scaled

    def _dense(self, values: pd.Series, table: str) -> np.ndarray:
        out = np.zeros((len(values), self.dim), dtype=np.float32)
        for row, v in enumerate(values):
            if v is None or (np.ndim(v) == 0 and pd.isna(v)):
                if self.spec.missing == "error":
                    raise ValueError(f"{table}: dense column '{self.spec.source_column}' is missing at row {row}")
                continue
            vec = np.asarray(v, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.dim:
                raise ValueError(f"{table}: dense column '{self.spec.source_column}' row {row} has dim {vec.shape[0]}, expected {self.dim}")
            if not np.isfinite(vec).all():
                raise ValueError(f"{table}: dense column '{self.spec.source_column}' row {row} has NaN/inf")
            out[row] = vec
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": {k: v for k, v in vars(self.spec).items()},
            "vocab": self.vocab.to_json() if self.vocab is not None else None,
            "mean": self.mean, "std": self.std, "dim": self.dim, "max_len": self.max_len,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FittedFeature":
        vocab = Vocabulary.from_json(data["vocab"]) if data["vocab"] is not None else None
        return cls(FeatureSpec(**data["spec"]), vocab, data["mean"], data["std"], data["dim"], data["max_len"])


def fit_feature(spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None = None) -> FittedFeature:
    """Fit one feature on ``frame`` (the rows of entities seen in training).

    ``id`` features reuse ``ids`` (the train-split id vocabulary) and ``history`` only records its length.
    """
    if spec.kind == "id":
        return FittedFeature(spec, vocab=ids)
    if spec.kind == "history":
        return FittedFeature(spec, max_len=spec.max_len or DEFAULT_MAX_LEN["history"])
    require_columns(frame, [spec.source_column], table)
    values = frame[spec.source_column]
    if spec.kind in ("categorical", "text"):
        values = text_cells(values, spec, table)
    if spec.kind == "categorical":
        if spec.prefix:
            values = values.astype("string").str[: spec.prefix]
        return FittedFeature(spec, vocab=Vocabulary.fit(values.tolist(), spec.min_count))
    if spec.kind in ("multi_hot", "text"):
        lists = [split_tags(v, spec.separator) if spec.kind == "multi_hot" else tokenize(v) for v in values]
        vocab = None if spec.hash_buckets else Vocabulary.fit((t for lst in lists for t in lst), spec.min_count)
        longest = max((len(lst) for lst in lists), default=1)
        return FittedFeature(spec, vocab=vocab, max_len=max(1, min(longest, spec.max_len or DEFAULT_MAX_LEN[spec.kind])))
    if spec.kind == "numeric":
        x = _as_float(values, spec, table)
        if spec.transform == "log1p":
            x = np.log1p(np.clip(x, 0, None))
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            raise ValueError(f"{table}: numeric column '{spec.source_column}' has no finite values in the train split")
        with np.errstate(over="ignore"):
            mean, std = float(finite.mean()), float(finite.std())
        if not (np.isfinite(mean) and np.isfinite(std)):
            raise ValueError(f"{table}: numeric column '{spec.source_column}' has values too large to standardise "
                             f"(largest magnitude {np.abs(finite).max():g}); rescale it or use transform: log1p")
        return FittedFeature(spec, mean=mean, std=std if std > 0 else 1.0)
    if spec.kind == "dense":
        first = next((v for v in values if v is not None and np.ndim(v) > 0), None)
        if first is None:
            raise ValueError(f"{table}: dense column '{spec.source_column}' holds no vectors")
        return FittedFeature(spec, dim=int(np.asarray(first).size))
    raise ValueError(f"feature '{spec.name}' has unknown kind '{spec.kind}'")


def text_cells(values: pd.Series, spec: FeatureSpec, table: str) -> pd.Series:
    """A categorical or text column as strings: numbers (all-digit titles a reader parsed as ints, a
    float column given as text) become their text (integral floats without '.0'), missing stays
    missing (None).

    Raises:
        ValueError: a cell holds something other than a string or a number (a list, a dict, bytes),
            naming the table, column, row and value.
    """
    out = np.empty(len(values), dtype=object)
    for row, v in enumerate(values.tolist()):
        if isinstance(v, str):
            out[row] = v
        elif v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            out[row] = None
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            out[row] = _key(v)
        else:
            raise ValueError(f"{table}: {spec.kind} column '{spec.source_column}' has the value {v!r} ({type(v).__name__}) "
                             f"at row {row}; {spec.kind} features are strings (use kind multi_hot for lists of tags)")
    return pd.Series(out, index=values.index, name=values.name, dtype=object)


def _as_float(values: pd.Series, spec: FeatureSpec, table: str) -> np.ndarray:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(x) & values.notna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{table}: numeric column '{spec.source_column}' has a non-numeric value {values.iloc[row]!r} at row {row}")
    if np.isinf(x).any():
        row = int(np.argmax(np.isinf(x)))
        raise ValueError(f"{table}: numeric column '{spec.source_column}' has an infinite value {x[row]} at row {row}")
    return x


@dataclass
class Preprocessor:
    """Every fitted feature of both towers, plus the train-split user and item id vocabularies."""

    query: dict[str, FittedFeature]
    candidate: dict[str, FittedFeature]
    user_ids: Vocabulary
    item_ids: Vocabulary

    @classmethod
    def fit(cls, schema: Schema, train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, names: dict[str, str]) -> "Preprocessor":
        user_ids = Vocabulary.fit(train[USER].tolist())
        item_ids = Vocabulary.fit(train[ITEM].tolist())
        return cls.fit_with_ids(schema, user_ids, item_ids, users, items, names)

    @classmethod
    def fit_with_ids(cls, schema: Schema, user_ids: Vocabulary, item_ids: Vocabulary, users: pd.DataFrame, items: pd.DataFrame, names: dict[str, str]) -> "Preprocessor":
        """Fits the features on the users and items in the train-split id vocabularies (which hold exactly those)."""
        seen_users = users[users[USER].isin(user_ids.values)]
        seen_items = items[items[ITEM].isin(item_ids.values)]
        query = {s.name: fit_feature(s, seen_users, names["users"], user_ids) for s in schema.query}
        candidate = {s.name: fit_feature(s, seen_items, names["items"], item_ids) for s in schema.candidate}
        return cls(query, candidate, user_ids, item_ids)

    def side(self, side: str) -> dict[str, FittedFeature]:
        return self.query if side == "query" else self.candidate

    def transform(self, side: str, frame: pd.DataFrame, table: str) -> dict[str, torch.Tensor]:
        """Tensors for every table-backed feature of a side (history features are built from interactions)."""
        return {name: f.transform(frame, table) for name, f in self.side(side).items() if f.spec.kind != "history"}

    def to_json(self) -> dict[str, Any]:
        return {
            "query": {n: f.to_json() for n, f in self.query.items()},
            "candidate": {n: f.to_json() for n, f in self.candidate.items()},
            "user_ids": self.user_ids.to_json(),
            "item_ids": self.item_ids.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preprocessor":
        return cls(
            {n: FittedFeature.from_json(f) for n, f in data["query"].items()},
            {n: FittedFeature.from_json(f) for n, f in data["candidate"].items()},
            Vocabulary.from_json(data["user_ids"]),
            Vocabulary.from_json(data["item_ids"]),
        )
