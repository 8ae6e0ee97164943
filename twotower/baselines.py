"""Classic recommenders to measure the two-tower against, scored by the same metric code on the same split.

Each baseline is fitted on a split's known interactions (train for ``val``, train + val for
``test``, as the two-tower sees them as history at test time) and scores every item for a batch
of users. ``evaluate`` ranks through the datamodule's own ``EvalBatch`` (known items excluded,
candidates restricted as the protocol says) into ``RetrievalMetrics`` and ``BeyondAccuracyMetrics``.
Freshness baselines (``needs_times``) are fitted on the same interactions with when each happened;
content baselines (``needs_content``) on the users' histories and the items' candidate features.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from twotower.config_check import ConfigError
from twotower.data.tables import ITEM, TIME, USER, require_columns
from twotower.task.beyond_accuracy import beyond_accuracy_for_split
from twotower.task.freshness import DAY
from twotower.task.metrics import RetrievalMetrics
from twotower.task.retrieval import top_k

# Exact ties (items no user touched, cold users with no history) are broken by a seeded random
# order far below any real score difference, not by item row (which follows release date).
TIE_BREAK = 1e-6


class Recommender(Protocol):
    name: str

    def fit(self, user_items: sp.csr_matrix) -> Recommender: ...

    def score(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) scores; higher is better."""
        ...


def known_matrix(datamodule, split: str) -> sp.csr_matrix:
    """The (n_users, n_items) 0/1 matrix of the interactions known when evaluating ``split``."""
    known = datamodule.prepared.known[split]
    indptr, indices = known.indptr.cpu().numpy(), known.indices.cpu().numpy()
    shape = (len(datamodule.prepared.user_rows), len(datamodule.prepared.item_rows))
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=shape)


@dataclass
class KnownEvents:
    """The interactions known when evaluating a split, one entry per interaction, with its time."""

    users: np.ndarray  # (n,) user rows
    items: np.ndarray  # (n,) item rows
    times: np.ndarray  # (n,) Unix seconds
    num_items: int


class TimedRecommender(Protocol):
    """A recommender that needs when each known interaction happened, not only whether it did."""

    name: str
    needs_times: bool  # True: ``evaluate`` passes the known events to ``fit``

    def fit(self, user_items: sp.csr_matrix, events: KnownEvents) -> TimedRecommender: ...

    def score(self, users: np.ndarray) -> np.ndarray: ...


def known_events(datamodule, split: str) -> KnownEvents:
    """The interactions of ``known_matrix(datamodule, split)`` with their timestamps.

    The prepared data keeps which pairs are known but not when they happened, so the split is
    labelled again on the loaded interactions (splits are deterministic for their seed) and
    checked against the prepared known matrix.

    Raises:
        ValueError: the interactions have no timestamp column, or the relabelled known interactions
            differ in number from the prepared ones (naming both counts).
    """
    prepared = datamodule.prepared
    interactions = prepared.tables.interactions
    require_columns(interactions, [TIME], f"{prepared.tables.names['interactions']} (freshness baselines)")
    labels = datamodule.split(interactions).to_numpy()
    known = np.isin(labels, ["train"] if split == "val" else ["train", "val"])
    users = prepared.user_rows.get_indexer(interactions.loc[known, USER])
    items = prepared.item_rows.get_indexer(interactions.loc[known, ITEM])
    n_items = len(prepared.item_rows)
    matrix = known_matrix(datamodule, split).tocoo()
    expected = np.sort(matrix.row.astype(np.int64) * n_items + matrix.col)
    if len(users) != len(expected) or not np.array_equal(np.sort(users.astype(np.int64) * n_items + items), expected):
        raise ValueError(f"the split labels {len(users)} interactions known at '{split}', the prepared data has {len(expected)} "
                         "(or other pairs): freshness baselines need a split that labels the same rows every time it is called")
    return KnownEvents(users, items, interactions.loc[known, TIME].to_numpy(dtype=np.float64), n_items)


class _SameForEveryone:
    """A non-personalised baseline: ``fit`` sets one score per item (``self.scores``), every user gets it."""

    scores: np.ndarray

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users), len(self.scores)))


class Popularity(_SameForEveryone):
    """Every user gets the items with the most known interactions."""

    name = "popularity"

    def fit(self, user_items: sp.csr_matrix) -> Popularity:
        self.scores = np.asarray(user_items.sum(0)).ravel().astype(np.float32)
        return self


class RecencyPopularity(_SameForEveryone):
    """Popularity with each known interaction weighted by 2^(-age / half-life), its age measured from the
    latest known interaction (the end of the training data): yesterday's views count, last year's fade."""

    name = "recency-popularity"
    needs_times = True

    def __init__(self, half_life_days: float = 30.0):
        if not half_life_days > 0:
            raise ValueError(f"recency popularity half_life_days={half_life_days} must be > 0")
        self.half_life_days = half_life_days

    def fit(self, user_items: sp.csr_matrix, events: KnownEvents) -> RecencyPopularity:
        age = (events.times.max() - events.times) / DAY
        weights = np.exp(-age / self.half_life_days * np.log(2.0))
        self.scores = np.bincount(events.items, weights, minlength=events.num_items).astype(np.float32)
        return self


class Trending(_SameForEveryone):
    """The items with the most known interactions in the last ``window_days`` before the end of the
    training data; ties (items equally hot, or not seen in the window at all) go to the most popular overall.

    Scores are positions in that order (0 = least trending): the two counts as one float (window +
    overall / total) would lose the tie-break to float32 rounding on a large catalogue.
    """

    name = "trending"
    needs_times = True

    def __init__(self, window_days: float = 7.0):
        if not window_days > 0:
            raise ValueError(f"trending window_days={window_days} must be > 0")
        self.window_days = window_days

    def fit(self, user_items: sp.csr_matrix, events: KnownEvents) -> Trending:
        recent = events.times >= events.times.max() - self.window_days * DAY
        window = np.bincount(events.items[recent], minlength=events.num_items)
        overall = np.bincount(events.items, minlength=events.num_items)
        # Window count first, overall count second, exactly, as one int64 (overall <= len(events.items)).
        key = window.astype(np.int64) * (len(events.items) + 1) + overall
        # Dense rank: items equal in both counts share a position, so the evaluation's seeded jitter orders them.
        self.scores = np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.float32)
        return self


class ItemKNN:
    """Item-based nearest neighbours: cosine item-item similarity, ``neighbours`` kept per item (implicit's CosineRecommender)."""

    name = "item-knn"

    def __init__(self, neighbours: int = 100):
        self.neighbours = neighbours

    def fit(self, user_items: sp.csr_matrix) -> ItemKNN:
        from implicit.nearest_neighbours import CosineRecommender

        model = CosineRecommender(K=self.neighbours, num_threads=1)
        model.fit(user_items, show_progress=False)
        self.user_items, self.similarity = user_items, model.similarity.tocsr()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self.user_items[users] @ self.similarity).toarray()


class _Factors:
    """Scores as user factors . item factors of a fitted ``implicit`` model."""

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def fit(self, user_items: sp.csr_matrix) -> _Factors:
        model = self._model()
        model.fit(user_items, show_progress=False)
        self.user_factors, self.item_factors = model.user_factors, model.item_factors
        return self


class ALS(_Factors):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the ``implicit`` package."""

    name = "ALS"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 2.0, iterations: int = 15, seed: int = 0):
        self.options = dict(factors=factors, regularization=regularization, alpha=alpha, iterations=iterations, random_state=seed)

    def _model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(**self.options, num_threads=1)


class BPR(_Factors):
    """Bayesian personalised ranking (Rendle et al. 2009) from the ``implicit`` package."""

    name = "BPR"

    def __init__(self, factors: int = 64, learning_rate: float = 0.05, regularization: float = 0.01, iterations: int = 100, seed: int = 0):
        self.options = dict(factors=factors, learning_rate=learning_rate, regularization=regularization, iterations=iterations, random_state=seed)

    def _model(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(**self.options, num_threads=1)


class EASE:
    """Embarrassingly shallow autoencoder (Steck 2019): B = -P / diag(P), P = (X^T X + l2 I)^-1, diag(B) = 0."""

    name = "EASE"

    def __init__(self, l2: float = 300.0):
        self.l2 = l2

    def fit(self, user_items: sp.csr_matrix) -> EASE:
        gram = (user_items.T @ user_items).toarray().astype(np.float64)  # (n_items, n_items)
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)  # column j divided by P_jj
        weights[np.diag_indices_from(weights)] = 0.0
        self.user_items, self.weights = user_items, weights.astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.user_items[users] @ self.weights)


@dataclass
class KnownContent:
    """What content baselines read when evaluating a split: histories and the items' candidate features.

    Attributes:
        histories: (n_users, n_items) how often each item is in each user's history: the history
            feature's rows where the data has one (what the query tower reads), else the known interactions.
        item_features: candidate feature -> (n_items, ...) its values as the feature store holds them.
        kinds: candidate feature -> the name of its kind (``categorical``, ``multi_hot``, ...).
        line_histories: (n_impressions, n_items) the same counts for each impression's own click
            history, where the source records one per impression (news click logs' behaviors lines); else None.
    """

    histories: sp.csr_matrix
    item_features: dict[str, np.ndarray]
    kinds: dict[str, str]
    line_histories: sp.csr_matrix | None = None


def history_counts(table: torch.Tensor, n_items: int) -> sp.csr_matrix:
    """(R, n_items) counts of each item in each row of a history table (R, L) of catalogue rows + 1 (0 = empty slot)."""
    rows = table.cpu().numpy()
    owner = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)[rows > 0]
    # Duplicate (row, item) pairs are summed: an item clicked twice counts twice, as in the line itself.
    return sp.csr_matrix((np.ones(len(owner), dtype=np.float32), (owner, rows[rows > 0] - 1)), shape=(len(rows), n_items))


def known_content(datamodule, split: str) -> KnownContent:
    """The histories and item features of ``datamodule`` as known when evaluating ``split``."""
    prepared = datamodule.prepared
    n_items = len(prepared.item_rows)
    histories = history_counts(prepared.histories[split], n_items) if prepared.history_name else known_matrix(datamodule, split)
    lines = prepared.impressions.histories if prepared.impressions is not None else None
    return KnownContent(
        histories=histories,
        item_features={name: column.numpy() for name, column in prepared.items.cpu_columns().items()},
        kinds={name: fitted.spec.kind for name, fitted in prepared.preprocessor.candidate.items()},
        line_histories=None if lines is None else history_counts(lines, n_items),
    )


class ContentOverlap:
    """History-candidate content overlap: an item's score is the share of the user's history items that
    have its value of a categorical candidate feature (``category``: the share of the history in the
    candidate's category). An impression with its own history line is scored with that line (``score_lines``).

    Values out of the feature's vocabulary (index 0: unseen in training, or missing) match nothing:
    they are many values merged into one index, and counting them as equal would credit unrelated items.
    """

    name = "content-overlap"
    needs_content = True

    def __init__(self, feature: str = "category"):
        self.feature = feature

    def fit(self, user_items: sp.csr_matrix | None, content: KnownContent) -> ContentOverlap:
        # ConfigError (a ValueError): the command line prints a feature the data lacks as the user's to fix, not a traceback.
        if self.feature not in content.kinds:
            raise ConfigError(f"content overlap feature '{self.feature}' is not a candidate feature (candidate features: {', '.join(sorted(content.kinds))})")
        if content.kinds[self.feature] != "categorical":
            raise ConfigError(f"content overlap reads one value per item: feature '{self.feature}' is {content.kinds[self.feature]}, not categorical "
                             f"(categorical candidate features: {', '.join(sorted(n for n, k in content.kinds.items() if k == 'categorical')) or 'none'})")
        self.values = content.item_features[self.feature].astype(np.int64)  # (n_items,) vocabulary index, 0 = out of vocabulary
        known = np.flatnonzero(self.values > 0)
        # (n_items, n_values) one-hot of each item's value; out-of-vocabulary items have no entry, so column 0 stays empty.
        self.one_hot = sp.csr_matrix((np.ones(len(known), dtype=np.float32), (known, self.values[known])),
                                     shape=(len(self.values), int(self.values.max(initial=0)) + 1))
        self.histories, self.lines = content.histories, content.line_histories
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return self._shares(self.histories[users])

    def score_lines(self, lines: np.ndarray) -> np.ndarray:
        """(len(lines), n_items) scores of impressions, each read with its own history line."""
        if self.lines is None:
            raise ValueError("the data records no click history per impression: score users, not lines")
        return self._shares(self.lines[lines])

    def _shares(self, histories: sp.csr_matrix) -> np.ndarray:
        per_value = (histories @ self.one_hot).toarray()  # (R, n_values) history items with each value
        length = np.asarray(histories.sum(1)).reshape(-1, 1)  # (R, 1); 0 for an empty history, whose shares are all 0
        return (per_value[:, self.values] / np.maximum(length, 1)).astype(np.float32)  # (R, n_items)


# What a recommender's ``fit`` takes after the known matrix, by the flag it sets (none set: the matrix alone).
FIT_INPUTS = {"needs_times": known_events, "needs_content": known_content}


def fit_known(recommender: Recommender | TimedRecommender, datamodule, split: str) -> Recommender | TimedRecommender:
    """``recommender`` fitted on what is known when evaluating ``split`` (train for ``val``, train + val for ``test``)."""
    extras = [read(datamodule, split) for flag, read in FIT_INPUTS.items() if getattr(recommender, flag, False)]
    return recommender.fit(known_matrix(datamodule, split), *extras)


def evaluate(recommender: Recommender | TimedRecommender, datamodule, split: str, ks: Sequence[int] = (10, 20, 50, 100), beyond_ks: Sequence[int] = (10, 20), seed: int = 0) -> dict[str, float]:
    """Fit on the split's known interactions, rank for every evaluated user, and return ``{"recall@20": ...}``.

    Ranking goes through ``datamodule.eval_batch`` and ``twotower.task.retrieval.top_k`` (the same
    exclusion and candidate rules as the model's evaluation), so the numbers are comparable with its ``split/name@k``.
    """
    fit_known(recommender, datamodule, split)
    num_items = len(datamodule.prepared.item_rows)
    accuracy = RetrievalMetrics(ks)
    beyond = beyond_accuracy_for_split(datamodule, split, beyond_ks) if beyond_ks else None
    jitter = torch.from_numpy(np.random.default_rng(seed).random(num_items).astype(np.float32)) * TIE_BREAK
    k = max(list(ks) + list(beyond_ks))
    for users in datamodule.prepared.eval_users[split].split(datamodule.eval_batch_size):
        batch = datamodule.eval_batch(users.to(datamodule.data.users.device), split)
        scores = torch.from_numpy(np.array(recommender.score(users.cpu().numpy()), dtype=np.float32)) + jitter  # (U, n_items)
        top = top_k(scores, k, batch.exclude.cpu(), None if batch.candidates is None else batch.candidates.cpu()).indices
        targets = batch.targets.cpu()
        accuracy.update(top, targets, num_items)
        if beyond is not None:
            beyond.update(top, targets, users.cpu(), num_items, None if batch.candidates is None else batch.candidates.cpu())
    values = accuracy.compute()
    if beyond is not None:
        values.update(beyond.compute())
    return {name: float(v) for name, v in values.items()}
