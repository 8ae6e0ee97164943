import numpy as np
import pandas as pd
import pytest

from twotower.data.splits import HashSplit, LeaveLastOut, PredefinedSplit, RandomSplit, TemporalSplit


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
