"""Freshness metrics (age@k, fresh@k): first-seen times from the interactions known at a split, and
hand-computed values on a 3-user, 4-item log whose times are whole days."""
import numpy as np
import pandas as pd
import pytest
import torch

from twotower.baselines import Popularity, evaluate
from twotower.data import TwoTowerDataModule
from twotower.data.first_seen import first_seen
from twotower.data.tables import ITEM, TIME, USER, Tables
from twotower.task.beyond_accuracy import BeyondAccuracyMetrics, beyond_accuracy_for_split
from twotower.task.freshness import DAY

FEATURES = {"query": [{"name": USER, "kind": "id"}], "candidate": [{"name": ITEM, "kind": "id"}]}

# (user, item, day): days 0..10 train, 12..13 validation, 20..21 test.
LOG = [("u1", "A", 0), ("u2", "A", 1), ("u3", "B", 2), ("u1", "B", 10),
       ("u2", "C", 12), ("u3", "C", 13),
       ("u1", "D", 20), ("u2", "D", 21)]


class HandSource:
    def __init__(self, with_times: bool = True):
        self.with_times = with_times

    def load(self) -> Tables:
        interactions = pd.DataFrame(LOG, columns=[USER, ITEM, "day"])
        if self.with_times:
            interactions[TIME] = interactions["day"] * DAY
        interactions = interactions.drop(columns="day")
        users, items = pd.DataFrame({USER: ["u1", "u2", "u3"]}), pd.DataFrame({ITEM: ["A", "B", "C", "D"]})
        return Tables(interactions, users, items, {"interactions": "hand log", "users": "hand users", "items": "hand items"}).validate()


def by_day(interactions: pd.DataFrame) -> pd.Series:
    # The rows in LOG's order: 4 train, 2 validation, 2 test (the same labels with or without times).
    return pd.Series(["train"] * 4 + ["val"] * 2 + ["test"] * 2, index=interactions.index)


def datamodule(with_times: bool = True) -> TwoTowerDataModule:
    dm = TwoTowerDataModule(HandSource(with_times), FEATURES, split=by_day, batch_size=2)
    dm.setup()
    return dm


def test_first_seen_is_the_earliest_event_and_unseen_or_later_items_are_new():
    seen = first_seen(np.array([1, 0, 1, 1]), np.array([5.0, 3.0, 2.0, 9.0]), n_items=3)
    assert seen.end == 9.0
    np.testing.assert_array_equal(seen.times, [3.0, 2.0, np.nan])
    np.testing.assert_array_equal(seen.ages(), [6.0, 7.0, 0.0])  # item 2 never seen: age 0
    np.testing.assert_array_equal(seen.ages(now=2.5), [0.0, 0.5, 0.0])  # item 0 first seen after now: age 0
    assert first_seen(np.array([], dtype=np.int64), np.array([]), 2).ages().tolist() == [0.0, 0.0]


def test_first_seen_reads_only_the_interactions_known_at_each_split():
    seen = datamodule().prepared.first_seen
    # val knows train (days 0..10): C and D unseen; the end is day 10, not the log's day 21.
    assert seen["val"].end == 10 * DAY
    np.testing.assert_array_equal(seen["val"].ages() / DAY, [10, 8, 0, 0])
    # test knows train + val (days 0..13): C first seen on day 12, D still unseen.
    assert seen["test"].end == 13 * DAY
    np.testing.assert_array_equal(seen["test"].ages() / DAY, [13, 11, 1, 0])


def test_age_and_fresh_at_k_of_a_hand_example():
    metric = beyond_accuracy_for_split(datamodule(), "test", ks=[1, 2])
    torch.testing.assert_close(metric.item_age_days, torch.tensor([13.0, 11.0, 1.0, 0.0]))
    metric.update(torch.tensor([[2, 0], [3, 1]]), targets=torch.tensor([[0, 1], [3, 3]]), users=torch.tensor([0, 1]), num_items=4)
    values = {k: float(v) for k, v in metric.compute().items()}
    # top-1: C (1 day), D (0 days); top-2 adds A (13) and B (11).
    assert values["age@1"] == pytest.approx((1 + 0) / 2)
    assert values["fresh@1"] == pytest.approx(1.0)
    assert values["age@2"] == pytest.approx(((1 + 13) / 2 + (0 + 11) / 2) / 2)  # 6.25
    assert values["fresh@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_fresh_days_is_the_threshold_and_younger_means_strictly():
    metric = BeyondAccuracyMetrics(torch.eye(3), torch.tensor([1, 1, 1]), torch.tensor([1]), num_users=1, ks=[3],
                                   item_age_days=torch.tensor([2.0, 3.0, 9.0]), fresh_days=3.0)
    metric.set_activity_cuts(torch.tensor([0]))
    metric.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0], [0]]), torch.tensor([0]), num_items=3)
    values = metric.compute()
    assert float(values["fresh@3"]) == pytest.approx(1 / 3)  # 2 days only: 3 is not younger than 3
    assert float(values["age@3"]) == pytest.approx(14 / 3)


def test_without_times_the_freshness_metrics_are_absent_not_zero():
    dm = datamodule(with_times=False)
    assert dm.prepared.first_seen is None
    values = evaluate(Popularity(), dm, "test", ks=[1], beyond_ks=[1])
    assert "coverage@1" in values and "age@1" not in values and "fresh@1" not in values


def test_baseline_evaluation_reports_freshness():
    # Popularity at test: A, B, C have 2 known interactions each, D none. u1 knows A, B and gets C
    # (1 day old); u2 knows A, C and gets B (11 days old).
    values = evaluate(Popularity(), datamodule(), "test", ks=[1], beyond_ks=[1])
    assert values["age@1"] == pytest.approx((1 + 11) / 2)
    assert values["fresh@1"] == pytest.approx(1 / 2)


def test_item_ages_must_cover_the_catalogue():
    with pytest.raises(ValueError, match="item_age_days has 2 rows, item_popularity 3"):
        BeyondAccuracyMetrics(torch.eye(3), torch.tensor([1, 1, 1]), torch.tensor([1]), num_users=1, item_age_days=torch.zeros(2))
