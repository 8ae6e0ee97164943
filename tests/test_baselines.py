"""Baselines: closed forms against brute force, and evaluation through the datamodule's split."""
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from twotower.baselines import (
    ALS,
    BPR,
    DAY,
    EASE,
    ItemKNN,
    KnownEvents,
    Popularity,
    RecencyPopularity,
    Trending,
    evaluate,
    known_events,
    known_matrix,
)
from twotower.data import TwoTowerDataModule
from twotower.data.sources import SyntheticSource
from twotower.data.splits import RandomSplit

FEATURES = {"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "item_id", "kind": "id"}]}


@pytest.fixture(scope="module")
def datamodule():
    dm = TwoTowerDataModule(SyntheticSource(n_users=120, n_items=60, interactions_per_user=12, seed=3), FEATURES, RandomSplit(seed=3), batch_size=64, eval_batch_size=50)
    dm.setup("fit")
    return dm


def _matrix(rows):
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


def test_ease_columns_are_ridge_regressions_on_the_other_items():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 6)) < 0.4).astype(np.float32)
    l2 = 2.0
    weights = EASE(l2=l2).fit(sp.csr_matrix(x)).weights
    for j in range(6):
        others = [i for i in range(6) if i != j]
        a = x[:, others].astype(np.float64)
        expected = np.linalg.solve(a.T @ a + l2 * np.eye(5), a.T @ x[:, j])
        np.testing.assert_allclose(weights[others, j], expected, rtol=1e-4, atol=1e-5)
        assert weights[j, j] == 0.0


def test_item_knn_scores_are_sums_of_cosine_similarities():
    x = _matrix([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 1]])
    knn = ItemKNN(neighbours=10).fit(x)
    dense = x.toarray()
    norms = np.linalg.norm(dense, axis=0)
    cosine = dense.T @ dense / np.outer(norms, norms)
    # implicit keeps each item's similarity 1 to itself: it only raises known items, which evaluation excludes.
    np.testing.assert_allclose(knn.score(np.arange(4)), dense @ cosine, rtol=1e-5)


@pytest.mark.parametrize("model", [ALS(factors=4, regularization=0.1, iterations=20, seed=0), BPR(factors=8, iterations=200, learning_rate=0.05, seed=0)], ids=["ALS", "BPR"])
def test_factor_models_recommend_from_the_users_own_block(model):
    # Few factors, so the block structure is all they can hold.
    # Users 0-9 take items 0-4, users 10-19 take items 5-9; each user misses one item of its block.
    rows = np.zeros((20, 10), dtype=np.float32)
    for u in range(20):
        block = range(0, 5) if u < 10 else range(5, 10)
        rows[u, [i for i in block if i != u % 5 + (0 if u < 10 else 5)]] = 1
    model.fit(sp.csr_matrix(rows))
    scores = model.score(np.arange(20))
    scores[rows > 0] = -np.inf
    best = scores.argmax(1)
    assert ((best < 5) == (np.arange(20) < 10)).all()


def test_known_matrix_is_train_for_val_and_train_plus_val_for_test(datamodule):
    val, test = known_matrix(datamodule, "val"), known_matrix(datamodule, "test")
    assert val.nnz == datamodule.prepared.split_counts["train"]
    assert test.nnz == datamodule.prepared.split_counts["train"] + datamodule.prepared.split_counts["val"]
    users, items = datamodule.prepared.train_pairs.T.numpy()
    assert (np.asarray(val[users, items]) == 1).all()


def test_popularity_evaluation_matches_brute_force(datamodule):
    result = evaluate(Popularity(), datamodule, "test", ks=[5], beyond_ks=[])
    known = known_matrix(datamodule, "test").toarray() > 0
    counts = known.sum(0)
    heldout = datamodule.prepared.heldout["test"]
    recalls = []
    for u in datamodule.prepared.eval_users["test"].tolist():
        targets = set(heldout.indices[heldout.indptr[u] : heldout.indptr[u + 1]].tolist())
        # Ties by count are broken by the evaluation's seeded jitter: accept any order within a tie.
        candidates = np.flatnonzero(~known[u])
        ranked = candidates[np.argsort(-counts[candidates], kind="stable")]
        cut = counts[ranked[4]]
        sure = [i for i in ranked if counts[i] > cut]
        tied = [i for i in ranked if counts[i] == cut]
        low = len(targets & set(sure)) + max(0, len(targets & set(tied)) - (len(tied) - (5 - len(sure))))
        high = len(targets & set(sure)) + min(len(targets & set(tied)), 5 - len(sure))
        recalls.append((low / len(targets), high / len(targets)))
    lows, highs = np.array(recalls).T
    assert lows.mean() - 1e-6 <= result["recall@5"] <= highs.mean() + 1e-6


def test_evaluation_never_recommends_known_items(datamodule):
    class KnownFirst:
        """Scores the user's known items highest: the exclusion must remove them all."""
        name = "known-first"

        def fit(self, user_items):
            self.user_items = user_items
            return self

        def score(self, users):
            return self.user_items[users].toarray() * 100.0

    result = evaluate(KnownFirst(), datamodule, "val", ks=[5], beyond_ks=[], seed=1)
    assert result["recall@5"] < 0.5  # the known items would be no hit at all; the rest is by jitter
    # The same list the evaluation ranks, rebuilt: none of its items is known.
    users = datamodule.prepared.eval_users["val"]
    batch = datamodule.eval_batch(users, "val")
    known = known_matrix(datamodule, "val")
    assert set(zip(batch.exclude[0].tolist(), batch.exclude[1].tolist())) == {(p, i) for p, u in enumerate(users.tolist()) for i in known[u].indices}


def _events(items, days):
    items = np.array(items)
    return KnownEvents(np.zeros(len(items), dtype=np.int64), items, np.array(days, dtype=np.float64) * DAY, num_items=4)


def test_recency_popularity_halves_an_interactions_weight_every_half_life():
    # The data ends on day 3: ages 0, 0, 2 and 1 days, weights 1, 1, 1/4 and 1/2 at a one-day half-life.
    model = RecencyPopularity(half_life_days=1.0).fit(None, _events([0, 1, 1, 2], [3, 3, 1, 2]))
    np.testing.assert_allclose(model.score(np.arange(2)), [[1.0, 1.25, 0.5, 0.0]] * 2, rtol=1e-6)


def test_trending_ranks_by_the_last_window_then_by_overall_popularity():
    # The data ends on day 5; the one-day window holds days 4 to 5: item 1 twice, items 0 and 2 once.
    # Item 3, the most popular overall (3), is absent from the window; items 0 and 2 tie there and
    # item 0's 2 interactions overall beat item 2's 1. Scores are positions: 3 > 2 > 1 > 0.
    events = _events([3, 3, 3, 0, 0, 1, 1, 2], [0, 0, 1, 0.5, 5, 5, 4.5, 4.2])
    assert Trending(window_days=1.0).fit(None, events).score(np.arange(1)).tolist() == [[2.0, 3.0, 1.0, 0.0]]
    # Equal in both counts: one position, so the evaluation's jitter orders them.
    assert Trending(window_days=1.0).fit(None, _events([0, 1], [5, 5])).score(np.arange(1)).tolist() == [[1.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("make, match", [
    (lambda: RecencyPopularity(half_life_days=0.0), "half_life_days=0.0 must be > 0"),
    (lambda: Trending(window_days=-1.0), "window_days=-1.0 must be > 0"),
])
def test_freshness_baselines_refuse_a_non_positive_period(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_known_events_are_the_known_matrix_with_times(datamodule):
    for split in ("val", "test"):
        events = known_events(datamodule, split)
        rebuilt = sp.csr_matrix((np.ones(len(events.items), dtype=np.float32), (events.users, events.items)), shape=known_matrix(datamodule, split).shape)
        assert (rebuilt != known_matrix(datamodule, split)).nnz == 0
    other = SimpleNamespace(prepared=datamodule.prepared, split=RandomSplit(test=0.5, seed=3))
    with pytest.raises(ValueError, match="the split labels .* interactions known at 'test', the prepared data has"):
        known_events(other, "test")


def test_recency_popularity_with_an_endless_half_life_evaluates_as_popularity(datamodule):
    # Weights of 1 - 1e-11 round to whole counts in float32: the same scores, the same seeded ties.
    fresh = evaluate(RecencyPopularity(half_life_days=1e12), datamodule, "test", ks=[10], beyond_ks=[10])
    assert fresh == evaluate(Popularity(), datamodule, "test", ks=[10], beyond_ks=[10])
