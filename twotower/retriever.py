"""Serving recommendations from an artifact directory: ``Retriever.load(dir).recommend(users, k)``.

Loading checks everything once (``twotower.artifact`` the files, ``twotower.artifact_checks`` what they
mean together); every query checks its arguments (``twotower.retriever_arguments``) and nothing else.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from twotower.artifact import (
    CANDIDATE_TOWER,
    INDEX,
    INDEX_INFOS,
    ITEM_EVENTS,
    ITEM_FEATURES,
    ITEM_IDS,
    ITEM_VECTORS,
    ITEMS,
    QUERY_TOWER,
    TOWER_CONFIG,
    TOWER_VOCAB,
    TOWER_WEIGHTS,
    USER_FEATURES,
    USER_HISTORIES,
    USER_IDS,
    USER_SEEN,
    Artifact,
    ArtifactError,
)
from twotower.artifact_checks import (
    check_histories,
    check_histories_match_users,
    check_index,
    check_item_features,
    check_item_vectors_encode,
    check_items_table,
    check_manifest,
    check_preprocessor_fits_towers,
    check_tower,
    check_users,
    ids_of,
    parse_vocab,
    prior_of,
)
from twotower.data.first_seen import FirstSeen, first_seen
from twotower.data.tables import ITEM, USER
from twotower.features import FittedFeature, Preprocessor
from twotower.index import apply_search_params, read_index_file
from twotower.model.saving import SavedTower, build_tower, load_weights
from twotower.query_inputs import query_inputs
from twotower.rerank import Rerank
from twotower.retriever_arguments import (
    data_frame,
    finite_number,
    flag,
    id_key,
    id_list,
    is_missing,
    is_sequence,
    positive_number,
    require_list,
    rerank_of,
    top_k,
)
from twotower.task.popularity_prior import PopularityPrior

# The freshness boost's default half-life: a week, the window ``trending`` and the fresh@k metric use.
FRESHNESS_HALF_LIFE = 7 * 86400.0


@dataclass
class Freshness:
    """One query's freshness knob (``Retriever.recommend``), its arguments already checked."""

    max_age: float | None
    boost: float
    half_life: float
    now: float | None

    def per_item(self, seen: FirstSeen) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(young, bonus): (n_items,) bool items no older than ``max_age`` and float32 score bonuses; None where unused."""
        if self.max_age is None and self.boost == 0.0:
            return None, None
        ages = seen.ages(self.now)
        young = ages <= self.max_age if self.max_age is not None else None
        bonus = (self.boost * np.exp2(-ages / self.half_life)).astype(np.float32) if self.boost > 0 else None
        return young, bonus


NO_TIMESTAMPS = "the artifact's interactions have no timestamps (trained without data.source.timestamp)"


def freshness_of(max_age: float | None, boost: float, half_life: float, now: float | None) -> Freshness:
    """The freshness knob's arguments, checked: a wrong type raises TypeError, a wrong value ValueError, naming the argument."""
    return Freshness(None if max_age is None else positive_number(max_age, "max_age"), finite_number(boost, "freshness_boost", at_least=0.0),
                     positive_number(half_life, "freshness_half_life"), None if now is None else finite_number(now, "now"))


@dataclass
class Recommendations:
    """One row per query: ``item_ids`` (U, k) id strings (an object array) and ``scores`` (U, k) float32, best first.

    ``k`` is the one asked for, capped at the catalogue size. A row with fewer items left (everything
    else excluded) is padded with ``""`` / ``-inf``.
    """

    item_ids: np.ndarray
    scores: np.ndarray


class Retriever:
    """Top-K items for users, visitors' histories and items, from a verified artifact.

    Build with ``Retriever.load(path)``; every method takes a batch (one row per query). Arguments
    are checked before any work: a wrong type raises TypeError, a wrong value ValueError, an unknown
    user or item id KeyError, each naming the argument. Ids may be strings or numbers (7, 7.0 and "7"
    are one id), of at most ``twotower.artifact.MAX_ID_CHARS`` characters; ``k`` is a positive int,
    and asking for more items than the catalogue holds returns all of them.
    """

    def __init__(self, artifact: Artifact, index: faiss.Index, query_tower: SavedTower, candidate_tower: SavedTower, preprocessor: Preprocessor,
                 item_ids: np.ndarray, item_vectors: np.ndarray, items: pd.DataFrame | None, user_ids: np.ndarray,
                 user_features: dict[str, np.ndarray], seen: dict[str, np.ndarray], events: dict[str, np.ndarray],
                 search_params: dict[str, Any] | None = None, item_features: dict[str, np.ndarray] | None = None,
                 histories: dict[str, np.ndarray] | None = None, fetch_factor: int = 1, prior: PopularityPrior | None = None):
        self.artifact, self.index = artifact, index
        # The popularity prior the model was validated with: the index's last dimension holds each item's
        # popularity, and every query appends its user's weight (``twotower.task.popularity_prior``).
        self.prior = prior
        self.fetch_factor = fetch_factor  # candidates per requested item, re-ranked exactly (``IndexSpec.fetch_factor``)
        self.query_tower, self.candidate_tower, self.preprocessor = query_tower.eval(), candidate_tower.eval(), preprocessor
        # Python strings, not a fixed-width unicode array: one long id added later would widen every entry to its length.
        self.item_ids, self.item_vectors, self.items = np.asarray(item_ids, dtype=object), item_vectors, items
        self.user_ids, self.user_features, self.seen = np.asarray(user_ids, dtype=object), user_features, seen
        self._item_row = {v: i for i, v in enumerate(self.item_ids.tolist())}
        self._user_row = {v: i for i, v in enumerate(self.user_ids.tolist())}
        # Whether the exported interactions had timestamps (older artifacts did not record it, and had them):
        # without, every event is at time 0, and trending and the freshness knob would answer as if it were not asked.
        self.timed = artifact.manifest.get("timestamps", True)
        self._set_events(events)
        self._new_item_popularity = self._popularity()[1] if prior is not None else 0.0
        self._add_lock = threading.Lock()
        self._search_params = search_params or {}  # re-applied to the index copies add_items makes
        self.history_name = next((n for n, f in preprocessor.query.items() if f.kind.from_interactions), None)
        # Catalogue rows -> candidate-tower inputs and id-vocabulary indices: what a history is read through (``query_inputs``).
        self.item_features, self.histories = item_features or {}, histories or {}
        self._item_vocab_index = torch.from_numpy(preprocessor.item_ids.lookup(self.item_ids.tolist()))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Retriever:
        """Open ``path`` and check it once, so that queries need not: nothing is unpickled, nothing is trusted.

        ``Artifact.open`` checks the format version and each file's size and sha256; then
        ``twotower.artifact_checks`` checks what the files mean together: the towers' digests against
        the manifest, the vocabularies against the towers, the index file before faiss reads it and
        the index against the manifest and the item vectors, every stored array's shape, dtype and range.

        Args:
            verify: hash every file against the manifest (sizes are always checked, and so is the meaning).

        Raises:
            ArtifactError: naming the file and what is wrong with it.
        """
        artifact = Artifact.open(path, verify=verify)
        root, manifest = artifact.path, artifact.manifest
        check_manifest(root, manifest)
        towers, configs, fitted = {}, {}, {}
        for name in (CANDIDATE_TOWER, QUERY_TOWER):  # the item tower first: a query tower may read through it
            config = artifact.json(f"{name}/{TOWER_CONFIG}")
            if not isinstance(config, dict):
                raise ArtifactError(f"{artifact.file(f'{name}/{TOWER_CONFIG}')} is not a tower config: a JSON {type(config).__name__}")
            try:
                # On the meta device the config allocates nothing: sizes come from the weights file, and a
                # config that does not match it (say a 10**12-row embedding) is refused, not allocated.
                with torch.device("meta"):
                    tower = build_tower(config, items=towers.get(CANDIDATE_TOWER))
            except Exception as err:  # noqa: BLE001 - an untrusted config: whatever building from it raises is the file's fault
                raise ArtifactError(f"{artifact.file(f'{name}/{TOWER_CONFIG}')} is not a tower config: {err!r}") from None
            weights = artifact.tensors(f"{name}/{TOWER_WEIGHTS}")
            try:
                load_weights(tower, weights, assign=True)
            except RuntimeError as err:
                raise ArtifactError(f"{artifact.file(f'{name}/{TOWER_WEIGHTS}')} does not fit {name}/{TOWER_CONFIG}: {err}") from None
            vocab = artifact.json(f"{name}/{TOWER_VOCAB}")
            fitted[name] = parse_vocab(root, name, vocab)
            check_tower(root, manifest, name, tower, config, vocab, weights)
            towers[name], configs[name] = tower, config
        preprocessor = Preprocessor(fitted[QUERY_TOWER][0], fitted[CANDIDATE_TOWER][0], fitted[QUERY_TOWER][1], fitted[CANDIDATE_TOWER][1])
        check_preprocessor_fits_towers(root, preprocessor, configs)
        try:
            index = read_index_file(artifact.file(INDEX))
        except ValueError as err:
            raise ArtifactError(str(err)) from None
        item_ids = ids_of(root, ITEM_IDS, artifact.array(ITEM_IDS, mmap=True), preprocessor.item_ids, f"{CANDIDATE_TOWER}/{TOWER_VOCAB}")
        item_vectors = artifact.array(ITEM_VECTORS, mmap=True)
        prior = prior_of(root, manifest)
        search_params, fetch_factor = check_index(root, manifest, artifact.json(INDEX_INFOS), index, {n: towers[n].output_dim for n in (QUERY_TOWER, CANDIDATE_TOWER)},
                                                  item_ids, item_vectors, prior)
        try:
            apply_search_params(index, search_params)
        except RuntimeError as err:  # a parameter this kind of index does not have
            raise ArtifactError(f"{artifact.file(INDEX_INFOS)}: search_params {search_params} do not apply to {INDEX}: {str(err).strip()}") from None
        user_ids = ids_of(root, USER_IDS, artifact.array(USER_IDS, mmap=True), preprocessor.user_ids, f"{QUERY_TOWER}/{TOWER_VOCAB}")
        user_features, seen, events = artifact.arrays(USER_FEATURES), artifact.arrays(USER_SEEN), artifact.arrays(ITEM_EVENTS)
        check_users(root, preprocessor, configs, user_ids, user_features, seen, events, manifest["counts"], len(item_ids))
        item_features, histories = artifact.arrays(ITEM_FEATURES), artifact.arrays(USER_HISTORIES)
        check_item_features(root, preprocessor, configs, item_features, item_ids)
        popularity = PopularityPrior.item_scores(prior.counts(events["items"], events["times"], len(item_ids)))[0] if prior is not None else None
        check_item_vectors_encode(root, towers[CANDIDATE_TOWER], item_features, item_vectors, popularity)
        check_histories(root, preprocessor, histories, len(user_ids), len(item_ids))
        check_histories_match_users(root, histories, user_features, preprocessor.item_ids.lookup(item_ids.tolist()))
        items = None
        if artifact.has(ITEMS):
            try:
                table = pq.read_table(artifact.file(ITEMS))
                table.validate(full=True)  # parquet readers do not check that text is UTF-8; without this, the first display would fail
                items = table.to_pandas()
            except Exception as err:  # noqa: BLE001 - pyarrow's errors for bad bytes are many; all mean the file is bad
                raise ArtifactError(f"{artifact.file(ITEMS)} is not a parquet table: {err}") from None
            check_items_table(root, items, item_ids)
        retriever = cls(artifact, index, towers[QUERY_TOWER], towers[CANDIDATE_TOWER], preprocessor, item_ids, item_vectors, items,
                        user_ids, user_features, seen, events, search_params, item_features, histories, fetch_factor, prior)
        retriever._check_towers_encode()
        return retriever

    @property
    def data_end(self) -> float:
        """The exported log's latest time: the default ``now`` of requests (0 for an empty log)."""
        return self._first_seen.end if self._first_seen.end is not None else 0.0

    @property
    def dim(self) -> int:
        """The index's dimension: the towers' output, plus one for the popularity prior's column where there is one."""
        return self.index.d

    # ------------------------------------------------------------------ queries
    def recommend(self, users: Sequence[Any] | pd.DataFrame, k: int = 10, exclude_seen: bool = True, rerank: Rerank | None = None,
                  max_age: float | None = None, freshness_boost: float = 0.0, freshness_half_life: float = FRESHNESS_HALF_LIFE,
                  now: float | None = None) -> Recommendations:
        """Top-k items for known user ids, or for raw user feature rows (a DataFrame with the users table's columns).

        Raw rows may carry a ``history`` column (the feature's name) of item-id lists, most recent
        first; rows whose ``user_id`` is known take the stored history otherwise. Unknown values of
        any feature go to the out-of-vocabulary path, and so does a missing (None/NaN) ``user_id``;
        missing numeric values follow the feature's ``missing`` setting, as in training.
        ``exclude_seen`` drops the items each user interacted with.

        Freshness: an item's age is ``now`` minus its first interaction in the exported log, in the
        log's time unit (seconds for the bundled data sets); an item with none (never interacted with,
        or added by ``add_items``) or first seen after ``now`` is age 0.

        Args:
            max_age: drop items older than this (None: keep all); still k items where enough are young enough.
            freshness_boost: add ``freshness_boost * 0.5 ** (age / freshness_half_life)`` to each item's
                score before ranking (scores are cosines in [-1, 1]); the returned scores include it.
            freshness_half_life: the age at which the boost is halved.
            now: the time ages are counted to; default the log's latest event (the artifact's data end).
        """
        k = top_k(k, self.index.ntotal)
        exclude_seen, rerank = flag(exclude_seen, "exclude_seen"), rerank_of(rerank, k)
        freshness = freshness_of(max_age, freshness_boost, freshness_half_life, now)
        self._check_timed(freshness)
        if isinstance(users, pd.DataFrame):
            features, seen = self._raw_user_features(users, freshness.now)
        else:
            rows = self._rows(id_list(users, "users"), self._user_row, "user", "users")
            features = self._query_inputs({name: torch.from_numpy(array[rows]) for name, array in self.user_features.items()},
                                          {name: torch.from_numpy(array[rows]) for name, array in self.histories.items()}, freshness.now)
            seen = [self._seen_of(r) for r in rows]
        return self._search(self._blend(self.encode_queries(features), seen), k, seen if exclude_seen else None, rerank, freshness)

    def recommend_from_history(self, item_ids: Sequence[Any] | Sequence[Sequence[Any]], k: int = 10, rerank: Rerank | None = None,
                               max_age: float | None = None, freshness_boost: float = 0.0, freshness_half_life: float = FRESHNESS_HALF_LIFE,
                               now: float | None = None) -> Recommendations:
        """Top-k items for visitors known only by the items they just viewed (most recent first).

        ``item_ids`` is one visitor's list or a list of lists (never a bare string). The viewed items
        are excluded; ids the model does not know, and missing ones, are skipped. A visitor with no
        item the model knows gets ``popular`` items (no older than ``max_age``, where given). The
        freshness knob and ``now`` are ``recommend``'s.
        """
        histories = self._histories(item_ids)
        k = top_k(k, self.index.ntotal)
        rerank = rerank_of(rerank, k)
        freshness = freshness_of(max_age, freshness_boost, freshness_half_life, now)
        self._check_timed(freshness)
        if self.history_name is None:
            raise ValueError("the query tower has no history feature; recommend_from_history needs one")
        rows = self._history_rows(histories)
        features = self._query_inputs(self._visitor_features(len(histories)), {self.history_name: rows}, freshness.now)
        seen = [np.asarray([self._item_row[i] for i in h if i in self._item_row], dtype=np.int64) for h in histories]
        result = self._search(self._blend(self.encode_queries(features), seen), k, seen, rerank, freshness)
        # A visitor the towers know nothing of: read by id, no viewed item in the vocabulary; read through the item tower, none in the catalogue.
        read = rows if self.preprocessor.query[self.history_name].spec.through_item_tower else features[self.history_name]
        cold = (read == 0).all(1).numpy()
        if cold.any():
            young, _ = freshness.per_item(self._first_seen)
            fallback = self.popular(len(self.item_ids) if young is not None else k + max(len(s) for s in seen))
            if young is not None:
                fallback = Recommendations(*(a[:, young[[self._item_row[i] for i in fallback.item_ids[0]]]] for a in (fallback.item_ids, fallback.scores)))
            for row in np.flatnonzero(cold):
                viewed = set(histories[row])
                keep = np.fromiter((i not in viewed for i in fallback.item_ids[0]), dtype=bool, count=fallback.item_ids.shape[1])
                ids, scores = fallback.item_ids[0][keep][:k], fallback.scores[0][keep][:k]
                result.item_ids[row], result.scores[row] = "", -np.inf
                result.item_ids[row, : len(ids)], result.scores[row, : len(ids)] = ids, scores
        return result

    def similar_items(self, item_ids: Any | Sequence[Any], k: int = 10) -> Recommendations:
        """The k items nearest each given item (the item itself excluded); ``item_ids`` is one id or a list of them."""
        keys = id_list(item_ids, "item_ids") if is_sequence(item_ids) else [id_key(item_ids, "item_ids")]
        k = top_k(k, self.index.ntotal)
        rows = self._rows(keys, self._item_row, "item", "item_ids")
        queries = np.array(self.item_vectors[rows], dtype=np.float32)
        if self.prior is not None:
            queries[:, -1] = 0.0  # similar by the towers alone, not pulled towards what is popular
        return self._search(queries, k, [np.asarray([r]) for r in rows], None)

    def popular(self, k: int = 10) -> Recommendations:
        """The k items with the most interactions in the exported log (the fallback for a visitor with no history)."""
        item_ids = self.item_ids
        k = top_k(k, len(item_ids))
        counts = np.bincount(self._events["items"], minlength=len(item_ids)).astype(np.float32)
        return self._top_by(item_ids, counts, k)

    def trending(self, k: int = 10, half_life: float = 7 * 86400.0) -> Recommendations:
        """The k items with the most interactions, each weighted ``0.5 ** (age / half_life)``.

        ``age`` is counted back from the log's last timestamp, in the log's time unit (seconds for
        the bundled data sets); ``half_life`` is a finite number > 0.
        """
        item_ids = self.item_ids
        k, half_life = top_k(k, len(item_ids)), positive_number(half_life, "half_life")
        if not self.timed:
            raise ValueError(f"trending: {NO_TIMESTAMPS}, so no item is more recent than another: use popular")
        times = self._events["times"]
        weights = np.exp2(-(times.max(initial=0.0) - times) / half_life) if len(times) else times
        return self._top_by(item_ids, np.bincount(self._events["items"], weights=weights, minlength=len(item_ids)).astype(np.float32), k)

    def encode_queries(self, features: dict[str, torch.Tensor]) -> np.ndarray:
        """(U, D) float32 query vectors: the query tower's output (without the popularity prior's column)."""
        with torch.inference_mode():
            return self.query_tower(features).numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ item cold start
    def add_items(self, table: pd.DataFrame) -> np.ndarray:
        """Embed new items from their content with the candidate tower and add them to the index.

        ``table`` has the items table's columns; every row needs an id (at most ``MAX_ID_CHARS``
        characters) that is not in the catalogue yet. Unknown ids go to the out-of-vocabulary path of
        the id feature, so the vector comes from the content. Returns the new ids.
        """
        table = data_frame(table, "table")
        with self._add_lock:  # one add at a time, or two could copy the same index and one's items be lost
            return self._add_items(table)

    def _add_items(self, table: pd.DataFrame) -> np.ndarray:
        if ITEM not in table.columns:
            raise ValueError(f"new items table has no column '{ITEM}' (columns: {list(table.columns)})")
        keys = [id_key(v, f"table['{ITEM}'][{row}]") for row, v in enumerate(table[ITEM].tolist())]
        missing = [row for row, key in enumerate(keys) if key is None]
        if missing:
            raise ValueError(f"new items table: column '{ITEM}' is missing at row(s) {missing[:5]}; a new item needs an id")
        empty = [row for row, key in enumerate(keys) if key == ""]
        if empty:
            raise ValueError(f"new items table: column '{ITEM}' has an empty id '' at row(s) {empty[:5]}; "
                             "'' pads answers shorter than k, so it is no item's id")
        clash = [key for key in keys if key in self._item_row]
        repeated = pd.Index(keys)[pd.Index(keys).duplicated()].tolist()
        if clash or repeated:
            raise ValueError(f"new items table repeats item id(s) {(clash or repeated)[:5]} already in the index or the table")
        if not keys:
            return np.asarray(keys, dtype=object)
        table = table.assign(**{ITEM: keys})
        features = self.preprocessor.transform("candidate", table, "new items table")
        vocab_index = torch.from_numpy(self.preprocessor.item_ids.lookup(keys))
        with torch.inference_mode():
            vectors = self.candidate_tower(features).numpy().astype(np.float32)  # (n_new, D)
        if self.prior is not None:  # never interacted with: the popularity of an item with no interaction
            vectors = np.concatenate([vectors, np.full((len(vectors), 1), self._new_item_popularity, dtype=np.float32)], axis=1)
        # Queries keep running meanwhile: FAISS may not search an index while vectors are added to
        # it, so the vectors go into a copy. Rows only grow, and the index is published last, so a
        # query that finds a new row finds it in the arrays; one still on the old index sees the old catalogue.
        index = faiss.clone_index(self.index)
        apply_search_params(index, self._search_params)
        index.add(vectors)
        start = len(self.item_ids)
        self.item_vectors = np.concatenate([self.item_vectors, vectors])
        self.item_features = {name: np.concatenate([array, features[name].numpy()]) for name, array in self.item_features.items()}
        self._item_vocab_index = torch.cat([self._item_vocab_index, vocab_index])
        self.item_ids = np.concatenate([self.item_ids, np.asarray(keys, dtype=object)])
        if self.items is not None:
            self.items = pd.concat([self.items, table[[c for c in table.columns if c in self.items.columns]]], ignore_index=True)
        self._item_row = {**self._item_row, **{v: start + i for i, v in enumerate(keys)}}
        # Never interacted with: new (age 0) to the freshness knob.
        self._first_seen = FirstSeen(np.concatenate([self._first_seen.times, np.full(len(keys), np.nan)]), self._first_seen.end)
        self.index = index
        return np.asarray(keys, dtype=object)

    # ------------------------------------------------------------------ internals
    def _blend(self, queries: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
        """(U, D) query vectors -> what the index is searched with: with a popularity prior, each user's weight
        (from the number of items ``seen``) appended, as evaluation ranked with it."""
        if self.prior is None:
            return queries
        weights = self.prior.user_weights(torch.tensor([len(s) for s in seen], dtype=torch.float32)).numpy()
        return np.concatenate([queries, weights[:, None]], axis=1)

    def _popularity(self) -> tuple[np.ndarray, float]:
        """The popularity prior's column over the exported log, and the value of an item never interacted with."""
        return PopularityPrior.item_scores(self.prior.counts(self._events["items"], self._events["times"], len(self.item_ids)))

    def _search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None, rerank: Rerank | None,
                freshness: Freshness | None = None) -> Recommendations:
        index = self.index  # one index for the whole query, whatever add_items publishes meanwhile
        n = index.ntotal
        # Read after the index: add_items publishes the first-seen times first, so they cover every row it holds.
        young, bonus = freshness.per_item(self._first_seen) if freshness is not None else (None, None)
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        if young is not None:
            extra += int((~young[:n]).sum())  # fetched past like excluded items, so k young ones are still found
        wanted = rerank.fetch if rerank else k
        fetch = min(n, max(k * self.fetch_factor, wanted) + extra)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        pending = np.arange(len(queries))
        while len(pending):
            _, rows = index.search(queries[pending], fetch)  # (P, fetch)
            short = []
            for q, found in zip(pending, rows):
                found = found[found >= 0]
                lowest = found[-1] if len(found) else -1  # the index's last fetched item, before any filter
                if exclude:
                    found = found[~np.isin(found, exclude[q])]
                if young is not None:
                    found = found[young[found]]
                vectors = np.asarray(self.item_vectors[found], dtype=np.float32)  # (N, dim)
                exact = vectors @ queries[q]  # exact re-score: the index may approximate (PQ, HNSW)
                if bonus is not None:
                    # The boost can lift an item from below the fetched ones by at most freshness.boost: unless the
                    # wanted-th boosted score clears the lowest fetched score by that much, fetch twice as many.
                    floor = float(np.asarray(self.item_vectors[lowest], dtype=np.float32) @ queries[q]) if lowest >= 0 else -np.inf
                    exact = exact + bonus[found]
                    order = np.argsort(-exact, kind="stable")
                    if fetch < n and (len(order) < wanted or exact[order[wanted - 1]] < floor + freshness.boost):
                        short.append(q)
                        continue
                    found, vectors, exact = found[order], vectors[order], exact[order]
                if rerank is not None:
                    # The best rerank.fetch by exact score, after exclusions: a compressed index fetches in approximate order.
                    best = np.argsort(-exact, kind="stable")[: rerank.fetch]
                    found, vectors, exact = found[best], vectors[best], exact[best]
                    order = rerank.select(exact, vectors[:, : self.dim - (self.prior is not None)], k)  # diversity by the towers' vectors
                else:
                    order = np.argsort(-exact, kind="stable")[:k]
                out_rows[q, : len(order)], out_scores[q, : len(order)] = found[order], exact[order]
            pending, fetch = np.asarray(short, dtype=np.int64), min(n, 2 * fetch)
        ids = np.where(out_rows >= 0, self.item_ids[np.maximum(out_rows, 0)], "")
        return Recommendations(ids, out_scores)

    @staticmethod
    def _top_by(item_ids: np.ndarray, weights: np.ndarray, k: int) -> Recommendations:
        order = np.argsort(-weights, kind="stable")[:k]
        return Recommendations(item_ids[order][None], weights[order][None])

    def _rows(self, keys: list[str | None], lookup: dict[str, int], what: str, argument: str) -> np.ndarray:
        unknown = [key for key in keys if key not in lookup]  # a missing id (None) is in no lookup
        if unknown:
            hint = " (recommend_from_history or popular serve visitors without a profile)" if what == "user" else ""
            raise KeyError(f"{argument}: unknown {what} id(s) {unknown[:5]}{hint}")
        return np.asarray([lookup[key] for key in keys], dtype=np.int64)

    def _histories(self, item_ids: Any) -> list[list[str]]:
        """One visitor's list, or a list of visitors' lists, as lists of id keys (missing ids dropped)."""
        require_list(item_ids, "item_ids")
        nested = [is_sequence(h) for h in item_ids]
        if any(nested) and not all(nested):
            row = nested.index(not nested[0])
            raise TypeError(f"item_ids mixes lists and single ids (item_ids[0] is {type(item_ids[0]).__name__}, item_ids[{row}] is "
                            f"{type(item_ids[row]).__name__}): give one visitor's list of ids, or a list of such lists")
        lists = [(h, f"item_ids[{i}]") for i, h in enumerate(item_ids)] if nested and all(nested) else [(item_ids, "item_ids")]
        return [[key for key in id_list(h, name) if key is not None] for h, name in lists]

    def _check_timed(self, freshness: Freshness) -> None:
        """Refuses a freshness knob that needs items' ages when the artifact's interactions had no timestamps."""
        if not self.timed:
            for name, value, used in (("max_age", freshness.max_age, freshness.max_age is not None),
                                      ("freshness_boost", freshness.boost, freshness.boost > 0)):
                if used:
                    raise ValueError(f"{name}={value}: {NO_TIMESTAMPS}, so items have no age")

    def _set_events(self, events: dict[str, np.ndarray]) -> None:
        """The exported log (``items``: catalogue rows, ``times``) and each item's first interaction in it (the freshness knob's ages)."""
        self._events = events
        self._first_seen = first_seen(events["items"], events["times"], len(self.item_ids))

    def _seen_of(self, user_row: int) -> np.ndarray:
        indptr = self.seen["indptr"]
        return self.seen["indices"][indptr[user_row] : indptr[user_row + 1]]

    def _check_towers_encode(self) -> None:
        """Both towers encode at load: a config that builds but cannot run (say a NaN dropout) is refused here, not at the first query.

        The query tower encodes two stored users and a visitor, the candidate tower an item with every feature missing.
        """
        rows = np.arange(min(2, len(self.user_ids)))
        stored = {name: torch.from_numpy(array[rows]) for name, array in self.user_features.items()}
        visitor = self._visitor_features(1)
        table = {name: torch.cat([stored[name], visitor[name]]) for name in stored}
        histories = {name: torch.cat([torch.from_numpy(array[rows]), torch.zeros(1, array.shape[1], dtype=torch.long)]) for name, array in self.histories.items()}
        inputs = {QUERY_TOWER: self._query_inputs(table, histories),
                  CANDIDATE_TOWER: self._empty_features(self.preprocessor.candidate, 1)}
        for name, tower in ((QUERY_TOWER, self.query_tower), (CANDIDATE_TOWER, self.candidate_tower)):
            n = len(next(iter(inputs[name].values())))
            try:
                with torch.inference_mode():
                    vectors = tower(inputs[name])
            except Exception as err:  # noqa: BLE001 - whatever a tower built from untrusted files raises, the files are at fault
                raise ArtifactError(f"{self.artifact.path / name / TOWER_CONFIG}: the tower cannot encode its inputs: {err!r}") from None
            dim = self.dim - (self.prior is not None)  # the towers' own output, before the prior's column
            if tuple(vectors.shape) != (n, dim) or not torch.isfinite(vectors).all():
                raise ArtifactError(f"{self.artifact.path / name / TOWER_WEIGHTS}: the tower encodes {n} inputs as {tuple(vectors.shape)} "
                                    f"values{'' if torch.isfinite(vectors).all() else ' with NaN or inf'}, expected finite ({n}, {dim})")

    def _visitor_features(self, n: int) -> dict[str, torch.Tensor]:
        """Query inputs of anonymous visitors: every feature on its out-of-vocabulary / missing path."""
        return self._empty_features(self.preprocessor.query, n)

    @staticmethod
    def _empty_features(features: dict[str, FittedFeature], n: int) -> dict[str, torch.Tensor]:
        """Inputs of ``n`` rows with every feature on its out-of-vocabulary / missing path."""
        return {name: fitted.kind.empty(fitted, n) for name, fitted in features.items()}

    def _history_rows(self, histories: list[list[str]]) -> torch.Tensor:
        """(U, max_len) catalogue rows + 1 of each history's first ``max_len`` items in the catalogue; 0 = empty slot."""
        max_len = self.preprocessor.query[self.history_name].max_len
        out = torch.zeros(len(histories), max_len, dtype=torch.long)
        for row, history in enumerate(histories):
            known = [self._item_row[i] + 1 for i in history if i in self._item_row][:max_len]
            out[row, : len(known)] = torch.tensor(known, dtype=torch.long)
        return out

    def _query_inputs(self, table: dict[str, torch.Tensor], histories: dict[str, torch.Tensor], now: float | None = None) -> dict[str, torch.Tensor]:
        """Table features and history rows of a batch asked for at ``now`` (default: the log's end) -> every input the
        query tower reads (``twotower.query_inputs``)."""
        # add_items grows these before it publishes the new ids' rows, so any row a history holds is in both.
        item_features = self.item_features
        return query_inputs(self.preprocessor.query, table, histories, self._item_vocab_index,
                            lambda rows: {name: torch.from_numpy(array[rows.numpy()]) for name, array in item_features.items()},
                            self.data_end if now is None else now)

    def _raw_user_features(self, users: pd.DataFrame, now: float | None) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
        frame = data_frame(users, "users")
        known = np.full(len(frame), -1, dtype=np.int64)
        if USER in frame.columns:
            # Keys as the vocabulary made them (1.0 -> '1'); a missing id is an unknown user, never a match.
            # Checked before the features: an id feature's lookup would stop at a list or dict id with a bare TypeError.
            keys = [id_key(v, f"users['{USER}'][{row}]") for row, v in enumerate(frame[USER].tolist())]
            known = np.asarray([self._user_row.get(key, -1) if key is not None else -1 for key in keys], dtype=np.int64)
        features = self.preprocessor.transform("query", frame, "users")
        seen = [self._seen_of(r) if r >= 0 else np.zeros(0, dtype=np.int64) for r in known]
        histories = {}
        if self.history_name:
            name = self.history_name
            if name in frame.columns:
                lists = [[] if is_missing(cell) else [key for key in id_list(cell, f"users['{name}'][{row}]") if key is not None]
                         for row, cell in enumerate(frame[name].tolist())]
                histories[name] = self._history_rows(lists)
                seen = [np.union1d(s, [self._item_row[i] for i in h if i in self._item_row]).astype(np.int64) for s, h in zip(seen, lists)]
            else:
                stored = torch.from_numpy(self.histories[name][np.maximum(known, 0)])
                histories[name] = stored.masked_fill(torch.from_numpy(known < 0).unsqueeze(1), 0)
        return self._query_inputs(features, histories, now), seen
