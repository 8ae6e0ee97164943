"""Serving recommendations from an artifact directory: ``Retriever.load(dir).recommend(users, k)``."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import pandas as pd
import torch

from twotower.artifact import (
    CANDIDATE_TOWER, INDEX, INDEX_INFOS, ITEM_EVENTS, ITEM_IDS, ITEM_VECTORS, ITEMS, QUERY_TOWER, TOWER_CONFIG,
    TOWER_VOCAB, TOWER_WEIGHTS, USER_FEATURES, USER_IDS, USER_SEEN, Artifact, ArtifactError,
)
from twotower.data.preprocess import FittedFeature, Preprocessor
from twotower.data.tables import ITEM, USER, id_keys
from twotower.data.vocab import Vocabulary
from twotower.index import apply_search_params
from twotower.model.towers import Tower
from twotower.rerank import Rerank


@dataclass
class Recommendations:
    """One row per query: ``item_ids`` (U, k) strings and ``scores`` (U, k) float32, best first.

    A row with fewer than k items left (small catalogue, everything excluded) is padded with ``""`` / ``-inf``.
    """

    item_ids: np.ndarray
    scores: np.ndarray


class Retriever:
    """Top-K items for users, visitors' histories and items, from a verified artifact.

    Build with ``Retriever.load(path)``; every method takes a batch (one row per query).
    """

    def __init__(self, artifact: Artifact, index: faiss.Index, query_tower: Tower, candidate_tower: Tower, preprocessor: Preprocessor,
                 item_ids: np.ndarray, item_vectors: np.ndarray, items: pd.DataFrame | None, user_ids: np.ndarray,
                 user_features: dict[str, np.ndarray], seen: dict[str, np.ndarray], events: dict[str, np.ndarray],
                 search_params: dict[str, Any] | None = None):
        self.artifact, self.index = artifact, index
        self.query_tower, self.candidate_tower, self.preprocessor = query_tower.eval(), candidate_tower.eval(), preprocessor
        self.item_ids, self.item_vectors, self.items = item_ids, item_vectors, items
        self.user_ids, self.user_features, self.seen = user_ids, user_features, seen
        self._item_row = {v: i for i, v in enumerate(item_ids.tolist())}
        self._user_row = {v: i for i, v in enumerate(user_ids.tolist())}
        self._events = events
        self._add_lock = threading.Lock()
        self._search_params = search_params or {}  # re-applied to the index copies add_items makes
        self.history_name = next((n for n, f in preprocessor.query.items() if f.spec.kind == "history"), None)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Retriever":
        """Open ``path``, check format version, sha256 of every file, and shapes; nothing is unpickled.

        Args:
            verify: hash every file against the manifest (sizes are always checked).
        """
        artifact = Artifact.open(path, verify=verify)
        towers, vocabs = {}, {}
        for name in (QUERY_TOWER, CANDIDATE_TOWER):
            config = artifact.json(f"{name}/{TOWER_CONFIG}")
            try:
                # On the meta device the config allocates nothing: sizes come from the weights file, and a
                # config that does not match it (say a 10**12-row embedding) is refused, not allocated.
                with torch.device("meta"):
                    tower = Tower(**config)
            except (TypeError, ValueError, KeyError) as err:
                raise ArtifactError(f"{artifact.file(f'{name}/{TOWER_CONFIG}')} is not a tower config: {err!r}") from None
            weights = artifact.tensors(f"{name}/{TOWER_WEIGHTS}")
            try:
                tower.load_state_dict(weights, assign=True)
            except RuntimeError as err:
                raise ArtifactError(f"{artifact.file(f'{name}/{TOWER_WEIGHTS}')} does not fit {name}/{TOWER_CONFIG}: {err}") from None
            towers[name], vocabs[name] = tower, artifact.json(f"{name}/{TOWER_VOCAB}")
        preprocessor = Preprocessor(
            {n: FittedFeature.from_json(f) for n, f in vocabs[QUERY_TOWER]["features"].items()},
            {n: FittedFeature.from_json(f) for n, f in vocabs[CANDIDATE_TOWER]["features"].items()},
            Vocabulary.from_json(vocabs[QUERY_TOWER]["ids"]),
            Vocabulary.from_json(vocabs[CANDIDATE_TOWER]["ids"]),
        )
        index = faiss.read_index(str(artifact.file(INDEX)))
        search_params = artifact.json(INDEX_INFOS).get("search_params", {})
        apply_search_params(index, search_params)
        item_ids, item_vectors = artifact.array(ITEM_IDS), artifact.array(ITEM_VECTORS, mmap=True)
        user_ids, user_features = artifact.array(USER_IDS), artifact.arrays(USER_FEATURES)
        items = pd.read_parquet(artifact.file(ITEMS)) if artifact.has(ITEMS) else None
        seen, events = artifact.arrays(USER_SEEN), artifact.arrays(ITEM_EVENTS)

        dim = artifact.manifest["dim"]
        _expect(f"{QUERY_TOWER}/{TOWER_CONFIG}", "the query tower outputs dim", towers[QUERY_TOWER].output_dim, f"{INDEX} has dim", index.d)
        _expect(f"{CANDIDATE_TOWER}/{TOWER_CONFIG}", "the candidate tower outputs dim", towers[CANDIDATE_TOWER].output_dim, f"{INDEX} has dim", index.d)
        _expect("manifest.json", "dim", dim, f"{INDEX} has dim", index.d)
        _expect(ITEM_IDS, "holds item ids:", len(item_ids), f"{INDEX} holds vectors:", index.ntotal)
        _expect(ITEM_VECTORS, "has shape", tuple(item_vectors.shape), f"{ITEM_IDS} x dim gives", (len(item_ids), index.d))
        for name, array in user_features.items():
            _expect(USER_FEATURES, f"array '{name}' has rows", array.shape[0], f"{USER_IDS} has users", len(user_ids))
        _expect(USER_SEEN, "indptr has length", len(seen["indptr"]), f"{USER_IDS} has users + 1 =", len(user_ids) + 1)
        missing = sorted(set(preprocessor.query) - set(user_features))
        if missing:
            raise ArtifactError(f"{artifact.file(USER_FEATURES)} lacks query feature(s) {missing} (has {sorted(user_features)})")
        return cls(artifact, index, towers[QUERY_TOWER], towers[CANDIDATE_TOWER], preprocessor, item_ids, item_vectors, items,
                   user_ids, user_features, seen, events, search_params)

    @property
    def dim(self) -> int:
        return self.index.d

    # ------------------------------------------------------------------ queries
    def recommend(self, users: Sequence[Any] | pd.DataFrame, k: int = 10, exclude_seen: bool = True, rerank: Rerank | None = None) -> Recommendations:
        """Top-k items for known user ids, or for raw user feature rows (a DataFrame with the users table's columns).

        Raw rows may carry a ``history`` column (the feature's name) of item-id lists, most recent
        first; rows whose ``user_id`` is known take the stored history otherwise. Unknown values of
        any feature go to the out-of-vocabulary path. ``exclude_seen`` drops the items each user interacted with.
        """
        if isinstance(users, pd.DataFrame):
            features, seen = self._raw_user_features(users)
        else:
            rows = self._rows(users, self._user_row, "user")
            features = {name: torch.from_numpy(array[rows]) for name, array in self.user_features.items()}
            seen = [self._seen_of(r) for r in rows]
        return self._search(self.encode_queries(features), k, seen if exclude_seen else None, rerank)

    def recommend_from_history(self, item_ids: Sequence[Any] | Sequence[Sequence[Any]], k: int = 10, rerank: Rerank | None = None) -> Recommendations:
        """Top-k items for visitors known only by the items they just viewed (most recent first).

        ``item_ids`` is one visitor's list or a list of lists. The viewed items are excluded. A
        visitor with no item the model knows gets ``popular`` items.
        """
        if self.history_name is None:
            raise ValueError("the query tower has no history feature; recommend_from_history needs one")
        histories = [item_ids] if not len(item_ids) or not _is_sequence(item_ids[0]) else list(item_ids)
        histories = [_keys(h) for h in histories]
        features = self._visitor_features(len(histories))
        history = self._history_tensor(histories)
        features[self.history_name] = history
        seen = [np.asarray([self._item_row[i] for i in h if i in self._item_row], dtype=np.int64) for h in histories]
        result = self._search(self.encode_queries(features), k, seen, rerank)
        cold = (history == 0).all(1).numpy()
        if cold.any():
            fallback = self.popular(k + max(len(s) for s in seen))
            for row in np.flatnonzero(cold):
                keep = ~np.isin(fallback.item_ids[0], np.asarray(histories[row], dtype=str))
                result.item_ids[row], result.scores[row] = fallback.item_ids[0][keep][:k], fallback.scores[0][keep][:k]
        return result

    def similar_items(self, item_ids: Any | Sequence[Any], k: int = 10) -> Recommendations:
        """The k items nearest each given item (the item itself excluded)."""
        ids = [item_ids] if not _is_sequence(item_ids) else list(item_ids)
        rows = self._rows(ids, self._item_row, "item")
        queries = np.ascontiguousarray(self.item_vectors[rows], dtype=np.float32)
        return self._search(queries, k, [np.asarray([r]) for r in rows], None)

    def popular(self, k: int = 10) -> Recommendations:
        """The k items with the most interactions in the exported log (the fallback for a visitor with no history)."""
        counts = np.bincount(self._events["items"], minlength=len(self.item_ids)).astype(np.float32)
        return self._top_by(counts, k)

    def trending(self, k: int = 10, half_life: float = 7 * 86400.0) -> Recommendations:
        """The k items with the most interactions, each weighted ``0.5 ** (age / half_life)``.

        ``age`` is counted back from the log's last timestamp, in the log's time unit (seconds for MovieLens).
        """
        if half_life <= 0:
            raise ValueError(f"half_life={half_life} must be positive")
        times = self._events["times"]
        weights = np.exp2(-(times.max(initial=0.0) - times) / half_life) if len(times) else times
        return self._top_by(np.bincount(self._events["items"], weights=weights, minlength=len(self.item_ids)).astype(np.float32), k)

    def encode_queries(self, features: dict[str, torch.Tensor]) -> np.ndarray:
        """(U, dim) float32 query vectors."""
        with torch.inference_mode():
            return self.query_tower(features).numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ item cold start
    def add_items(self, table: pd.DataFrame) -> np.ndarray:
        """Embed new items from their content with the candidate tower and add them to the index.

        ``table`` has the items table's columns; unknown ids go to the out-of-vocabulary path of the
        id feature, so the vector comes from the content. Returns the new ids.
        """
        with self._add_lock:  # one add at a time, or two could copy the same index and one's items be lost
            return self._add_items(table)

    def _add_items(self, table: pd.DataFrame) -> np.ndarray:
        if ITEM not in table.columns:
            raise ValueError(f"new items table has no column '{ITEM}' (columns: {list(table.columns)})")
        table = table.assign(**{ITEM: id_keys(table[ITEM].reset_index(drop=True)).to_numpy()})
        clash = [i for i in table[ITEM] if i in self._item_row]
        if clash or table[ITEM].duplicated().any():
            raise ValueError(f"new items table repeats item id(s) {(clash or table[ITEM][table[ITEM].duplicated()].tolist())[:5]} already in the index or the table")
        features = self.preprocessor.transform("candidate", table, "new items table")
        with torch.inference_mode():
            vectors = self.candidate_tower(features).numpy().astype(np.float32)  # (n_new, dim)
        # Queries keep running meanwhile: FAISS may not search an index while vectors are added to
        # it, so the vectors go into a copy. Rows only grow, and the index is published last, so a
        # query that finds a new row finds it in the arrays; one still on the old index sees the old catalogue.
        index = faiss.clone_index(self.index)
        apply_search_params(index, self._search_params)
        index.add(vectors)
        start = len(self.item_ids)
        self.item_vectors = np.concatenate([self.item_vectors, vectors])
        self.item_ids = np.concatenate([self.item_ids, np.asarray(table[ITEM].tolist(), dtype=str)])  # widths promote
        if self.items is not None:
            self.items = pd.concat([self.items, table[[c for c in table.columns if c in self.items.columns]]], ignore_index=True)
        self._item_row = {**self._item_row, **{v: start + i for i, v in enumerate(table[ITEM])}}
        self.index = index
        return table[ITEM].to_numpy()

    # ------------------------------------------------------------------ internals
    def _search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None, rerank: Rerank | None) -> Recommendations:
        index = self.index  # one index for the whole query, whatever add_items publishes meanwhile
        n = index.ntotal
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(n, max(k, rerank.fetch if rerank else k) + extra)
        _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)  # (U, fetch)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for q, found in enumerate(rows):
            found = found[found >= 0]
            if exclude:
                found = found[~np.isin(found, exclude[q])]
            if rerank is not None:
                found = found[: rerank.fetch]  # the index's best rerank.fetch, after exclusions
            vectors = np.asarray(self.item_vectors[found], dtype=np.float32)  # (N, dim)
            exact = vectors @ queries[q]  # exact re-score: the index may approximate (PQ, HNSW)
            if rerank is not None:
                order = rerank.select(exact, vectors, k)
            else:
                order = np.argsort(-exact, kind="stable")[:k]
            out_rows[q, : len(order)], out_scores[q, : len(order)] = found[order], exact[order]
        ids = np.where(out_rows >= 0, self.item_ids[np.maximum(out_rows, 0)], "")
        return Recommendations(ids, out_scores)

    def _top_by(self, weights: np.ndarray, k: int) -> Recommendations:
        order = np.argsort(-weights, kind="stable")[:k]
        return Recommendations(self.item_ids[order][None], weights[order][None])

    def _rows(self, ids: Sequence[Any], lookup: dict[str, int], what: str) -> np.ndarray:
        keys = _keys(ids)
        unknown = [key for key in keys if key not in lookup]
        if unknown:
            hint = " (recommend_from_history or popular serve visitors without a profile)" if what == "user" else ""
            raise KeyError(f"unknown {what} id(s) {unknown[:5]}{hint}")
        return np.asarray([lookup[key] for key in keys], dtype=np.int64)

    def _seen_of(self, user_row: int) -> np.ndarray:
        indptr = self.seen["indptr"]
        return self.seen["indices"][indptr[user_row] : indptr[user_row + 1]]

    def _visitor_features(self, n: int) -> dict[str, torch.Tensor]:
        """Query inputs of anonymous visitors: every feature on its out-of-vocabulary / missing path."""
        out = {}
        for name, fitted in self.preprocessor.query.items():
            kind = fitted.spec.kind
            if kind in ("id", "categorical"):
                out[name] = torch.zeros(n, dtype=torch.long)
            elif kind in ("multi_hot", "text", "history"):
                out[name] = torch.zeros(n, fitted.max_len, dtype=torch.long)
            elif kind == "numeric":
                out[name] = torch.zeros(n)  # standardised: the train mean
            else:
                out[name] = torch.zeros(n, fitted.dim)
        return out

    def _history_tensor(self, histories: list[list[str]]) -> torch.Tensor:
        max_len = self.preprocessor.query[self.history_name].max_len
        return torch.from_numpy(self.preprocessor.item_ids.lookup_lists(histories, max_len))  # (U, max_len)

    def _raw_user_features(self, frame: pd.DataFrame) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
        frame = frame.reset_index(drop=True)
        table_features = {n: f for n, f in self.preprocessor.query.items() if f.spec.kind != "history"}
        features = {n: f.transform(frame, "user rows") for n, f in table_features.items()}
        known = np.full(len(frame), -1, dtype=np.int64)
        if USER in frame.columns:
            keys = id_keys(frame[USER].astype(object).where(frame[USER].notna(), "")).tolist()
            known = np.asarray([self._user_row.get(key, -1) for key in keys], dtype=np.int64)
        seen = [self._seen_of(r) if r >= 0 else np.zeros(0, dtype=np.int64) for r in known]
        if self.history_name:
            if self.history_name in frame.columns:
                histories = [_keys(h) if _is_sequence(h) else [] for h in frame[self.history_name]]
                features[self.history_name] = self._history_tensor(histories)
                seen = [np.union1d(s, [self._item_row[i] for i in h if i in self._item_row]).astype(np.int64) for s, h in zip(seen, histories)]
            else:
                stored = torch.from_numpy(self.user_features[self.history_name][np.maximum(known, 0)])
                features[self.history_name] = stored.masked_fill(torch.from_numpy(known < 0).unsqueeze(1), 0)
        return features, seen


def _expect(file: str, what: str, value: Any, other: str, expected: Any) -> None:
    if value != expected:
        raise ArtifactError(f"{file}: {what} {value}, but {other} {expected}")


def _keys(values: Sequence[Any]) -> list[str]:
    """Ids as the string keys ``tables.id_keys`` makes (integral floats lose '.0'), without pandas' per-call cost."""
    return [_key(v) for v in values]


def _key(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, pd.Series))
