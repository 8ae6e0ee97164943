import numpy as np
import pandas as pd
import pytest
import torch

from twotower.data import TwoTowerDataModule
from twotower.data.sources import SyntheticSource
from twotower.data.splits import HashSplit, LeaveLastOut, PredefinedSplit, RandomSplit, TemporalSplit
from twotower.data.tables import EXCLUDED


@pytest.fixture
def interactions():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), rng.integers(1, 15, 30))
    return pd.DataFrame({"user_id": users.astype(str), "item_id": rng.integers(0, 50, len(users)).astype(str), "timestamp": rng.permutation(len(users))})


def test_random_split_is_per_user_and_deterministic(interactions):
    labels = RandomSplit(test=0.2, val=0.25, seed=3)(interactions)
    assert labels.equals(RandomSplit(test=0.2, val=0.25, seed=3)(interactions))
    assert not labels.equals(RandomSplit(test=0.2, val=0.25, seed=4)(interactions))
    for _, group in labels.groupby(interactions["user_id"]):
        n = len(group)
        n_test = int(np.floor(n * 0.2 + 0.5))
        assert (group == "test").sum() == n_test
        assert (group == "val").sum() == int(np.floor((n - n_test) * 0.25 + 0.5))


def test_temporal_split_cuts_time_globally(interactions):
    labels = TemporalSplit(test=0.2, val=0.1)(interactions)
    t = interactions["timestamp"]
    assert t[labels == "train"].max() < t[labels == "val"].min() <= t[labels == "val"].max() < t[labels == "test"].min()
    assert (labels == "test").sum() == round(len(t) * 0.2)


# Twelve interactions whose rows are not in time order. By time: t1-t6 train (users a, b, c),
# t7-t8 validation (d has no training history, c has), t9-t12 test (d and e without, a and b with).
CUT = pd.DataFrame(
    [("d", "x", 7), ("a", "x", 1), ("a", "y", 12), ("c", "x", 4), ("d", "y", 9), ("b", "x", 2),
     ("e", "x", 11), ("a", "z", 6), ("a", "w", 3), ("b", "y", 10), ("c", "y", 8), ("b", "z", 5)],
    columns=["user_id", "item_id", "timestamp"],
)
X = EXCLUDED


@pytest.mark.parametrize("users, expected", [
    # n_test = round(12 * 0.3) = 4, n_val = round(8 * 0.25) = 2.
    ("all", ["val", "train", "test", "train", "test", "train", "test", "train", "train", "test", "val", "train"]),
    ("warm", [X, "train", "test", "train", X, "train", X, "train", "train", "test", "val", "train"]),
    ("cold", ["val", "train", X, "train", "test", "train", "test", "train", "train", X, X, "train"]),
])
def test_temporal_split_keeps_the_users_asked_for(users, expected):
    assert TemporalSplit(test=0.3, val=0.25, users=users)(CUT).tolist() == expected


@pytest.fixture
def arrivals():
    """Users arrive over time, each active for a while after (so the late ones have no training history)."""
    rng = np.random.default_rng(1)
    arrival = rng.uniform(0, 1000, 60)
    user = np.repeat(np.arange(60), 8)
    return pd.DataFrame({"user_id": user.astype(str), "item_id": rng.integers(0, 30, len(user)).astype(str),
                         "timestamp": arrival[user] + rng.exponential(100, len(user))})


@pytest.mark.parametrize("users", TemporalSplit.USERS)
def test_temporal_validation_lies_before_the_test_window(arrivals, users):
    labels = TemporalSplit(test=0.2, val=0.1, users=users)(arrivals)
    t = arrivals["timestamp"]
    assert (labels == "val").any() and (labels == "test").any()
    assert t[labels == "train"].max() < t[labels == "val"].min() and t[labels == "val"].max() < t[labels == "test"].min()


def test_temporal_warm_and_cold_split_the_mixed_evaluation_between_them(arrivals):
    interactions = arrivals
    mixed, warm, cold = (TemporalSplit(users=u)(interactions) for u in TemporalSplit.USERS)
    assert (warm == X).any() and (cold == X).any()
    assert (warm == "train").equals(mixed == "train") and (cold == "train").equals(mixed == "train")
    evaluated = mixed != "train"
    assert ((warm[evaluated] == X) != (cold[evaluated] == X)).all()  # each evaluated row in exactly one
    assert mixed[evaluated].equals(warm[evaluated].where(warm[evaluated] != X, cold[evaluated]))
    trained = set(interactions.loc[mixed == "train", "user_id"])
    assert set(interactions.loc[warm.isin(["val", "test"]), "user_id"]) <= trained
    assert not set(interactions.loc[cold.isin(["val", "test"]), "user_id"]) & trained


def test_temporal_split_refuses_an_unknown_user_group():
    with pytest.raises(ValueError, match="users='new' is not one of all, warm, cold"):
        TemporalSplit(users="new")


def test_leave_last_out(interactions):
    labels = LeaveLastOut()(interactions)
    for _, group in interactions.groupby("user_id"):
        lab = labels[group.index]
        latest = group["timestamp"].idxmax()
        if len(group) >= 2:
            assert lab[latest] == "test" and (lab == "test").sum() == 1
        if len(group) >= 3:
            assert (lab == "val").sum() == 1 and group.loc[lab == "val", "timestamp"].iloc[0] < group.loc[latest, "timestamp"]
        if len(group) == 1:
            assert lab.iloc[0] == "train"


def test_predefined_split_and_errors(interactions):
    frame = interactions.assign(split="train")
    assert (PredefinedSplit()(frame) == "train").all()
    with pytest.raises(ValueError, match=r"has no column\(s\) \['split'\]"):
        PredefinedSplit()(interactions)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['timestamp'\]"):
        TemporalSplit()(interactions.drop(columns="timestamp"))
    with pytest.raises(ValueError, match="test=1.5 must be in"):
        RandomSplit(test=1.5)


def test_random_split_equals_the_original_sort_by_user_string(interactions):
    """The integer-coded lexsort gives the labels the original sort of (user string, key) gave."""
    shuffled = interactions.sample(frac=1.0, random_state=1).reset_index(drop=True)
    for seed in (0, 3):
        rng = np.random.default_rng(seed)
        order = pd.DataFrame({"user_id": shuffled["user_id"].to_numpy(), "key": rng.random(len(shuffled))})
        order = order.sort_values(["user_id", "key"], kind="stable")
        rank = order.groupby("user_id", sort=False).cumcount().to_numpy()
        size = order.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
        n_test = np.floor(size * 0.2 + 0.5).astype(int)
        n_val = np.floor((size - n_test) * 0.25 + 0.5).astype(int)
        labels = np.where(rank < n_test, "test", np.where(rank < n_test + n_val, "val", "train"))
        expected = pd.Series(labels, index=order.index).reindex(shuffled.index)
        assert RandomSplit(test=0.2, val=0.25, seed=seed)(shuffled).tolist() == expected.tolist()


def test_hash_split_depends_only_on_the_pair_and_the_seed():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 500, 20000).astype(str), "item_id": rng.integers(0, 300, 20000).astype(str)})
    labels = HashSplit(test=0.2, val=0.25, seed=5)(frame)
    shares = labels.value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.01) and shares["val"] == pytest.approx(0.8 * 0.25, abs=0.01)
    # Row order and repeats do not matter: a pair keeps its label anywhere, every time.
    reordered = frame.iloc[::-1].reset_index(drop=True)
    assert HashSplit(test=0.2, val=0.25, seed=5)(reordered).tolist() == labels.tolist()[::-1]
    assert (labels.groupby([frame["user_id"], frame["item_id"]]).nunique() == 1).all()
    assert not labels.equals(HashSplit(test=0.2, val=0.25, seed=6)(frame))


class _LateUsers:
    """Synthetic tables whose first 15 users arrive late (in the last quarter of the time span), so a time cut has cold users."""

    def load(self):
        tables = SyntheticSource(n_users=100, n_items=60, interactions_per_user=10, seed=2).load()
        frame = tables.interactions
        late = frame["user_id"].astype(int) < 15
        frame.loc[late, "timestamp"] = 750_000 + frame.loc[late, "timestamp"] / 4
        return tables


def test_temporal_warm_and_cold_datamodules_rank_their_own_users_and_train_on_the_same_rows():
    features = {"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "item_id", "kind": "id"}]}
    prepared = {}
    for users in TemporalSplit.USERS:
        dm = TwoTowerDataModule(_LateUsers(), features, TemporalSplit(test=0.2, val=0.1, users=users), batch_size=32)
        dm.setup("fit")
        prepared[users] = dm.prepared
    trained = set(prepared["all"].train_pairs[:, 0].tolist())
    for split in ("val", "test"):
        warm, cold = (set(prepared[u].eval_users[split].tolist()) for u in ("warm", "cold"))
        assert warm and cold and warm <= trained and not cold & trained
        assert warm | cold == set(prepared["all"].eval_users[split].tolist())
        assert prepared["warm"].split_counts[split] + prepared["cold"].split_counts[split] == prepared["all"].split_counts[split]
    for users in ("warm", "cold"):
        assert torch.equal(prepared[users].train_pairs, prepared["all"].train_pairs)
