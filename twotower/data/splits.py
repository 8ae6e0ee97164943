"""Train/val/test splits of the interactions; each returns one label per row, deterministic for a seed.

A label is one of ``SPLITS`` or ``EXCLUDED`` (a row a protocol leaves out: neither trained on nor evaluated)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from twotower.data.tables import EXCLUDED, ITEM, SPLIT, SPLITS, TIME, USER, require_columns


class RandomSplit:
    """Per user, a random ``test`` share of their interactions is test; ``val`` of the rest is validation."""

    def __init__(self, test: float = 0.2, val: float = 0.1, seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        self.test, self.val, self.seed = test, val, seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        rng = np.random.default_rng(self.seed)
        key = rng.random(len(interactions))
        # Users as integer codes: only each user's rows' order by key matters, not the order of users.
        user = pd.factorize(interactions[USER])[0]
        order = np.lexsort((key, user))
        user_sorted = user[order]
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - np.searchsorted(user_sorted, user_sorted)
        size = np.bincount(user)[user]
        n_test = np.floor(size * self.test + 0.5).astype(int)
        n_val = np.floor((size - n_test) * self.val + 0.5).astype(int)
        labels = np.where(rank < n_test, "test", np.where(rank < n_test + n_val, "val", "train"))
        return pd.Series(labels, index=interactions.index)


class HashSplit:
    """Each (user, item) pair's split is a seeded hash of the two ids: ``test`` of the pairs are test,
    ``val`` of the rest validation.

    A row's label depends on nothing but its ids, so it can be computed one record batch at a time
    (the sharded datamodule does) and does not change when rows are re-sharded or reordered.
    Repeated interactions of a user with an item all fall in one split. Shares are exact in
    expectation, not per user (``RandomSplit`` is exact per user but needs every row in memory).
    """

    def __init__(self, test: float = 0.2, val: float = 0.1, seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        self.test, self.val, self.seed = test, val, seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        codes = self.codes(self.key_hashes(interactions[USER]), self.key_hashes(interactions[ITEM]))
        return pd.Series(np.asarray(SPLITS, dtype=object)[codes], index=interactions.index)

    def key_hashes(self, keys) -> np.ndarray:
        """(n,) uint64 seeded hashes of id keys (strings), stable across processes and runs."""
        return pd.util.hash_array(np.asarray(keys, dtype=object), hash_key=f"{self.seed % 10**16:016d}")

    def codes(self, user_hashes: np.ndarray, item_hashes: np.ndarray) -> np.ndarray:
        """(n,) int8 index into SPLITS (0 train, 1 val, 2 test) of the pairs of two hash arrays."""
        uniform = (mix64(user_hashes ^ mix64(item_hashes)) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
        return np.where(uniform < self.test, 2, np.where(uniform < self.test + (1 - self.test) * self.val, 1, 0)).astype(np.int8)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half the output bits (uint64, wrapping)."""
    x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class TemporalSplit:
    """A global time cut: the latest ``test`` share of interactions is test, the ``val`` share before it validation.

    Validation always precedes the test window in time, so model selection never sees the future
    it is tested on. ``users`` says whose validation and test interactions are evaluated:

    - ``all``: everyone's (the mixed protocol: most test users of a time cut may have no training history);
    - ``warm``: only users with at least one training interaction (the usual definition in the literature);
    - ``cold``: only users with none (their query tower has profile features, and at test time their
      validation interactions as history).

    The validation and test interactions of the other users are labelled ``excluded``: neither
    trained on (they lie after the cut) nor evaluated. Training rows are the same for all three.
    """

    USERS = ("all", "warm", "cold")

    def __init__(self, test: float = 0.2, val: float = 0.1, users: str = "all", seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        if users not in self.USERS:
            raise ValueError(f"temporal split users='{users}' is not one of {', '.join(self.USERS)}")
        self.test, self.val, self.users = test, val, users

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        require_columns(interactions, [TIME], "interactions (temporal split)")
        # Ties in time are broken by row order so the shares are exact and deterministic.
        order = np.argsort(interactions[TIME].to_numpy(), kind="stable")
        n = len(order)
        n_test = int(round(n * self.test))
        n_val = int(round((n - n_test) * self.val))
        labels = np.empty(n, dtype=object)
        labels[order[: n - n_test - n_val]] = "train"
        labels[order[n - n_test - n_val : n - n_test]] = "val"
        labels[order[n - n_test :]] = "test"
        if self.users != "all":
            # pandas' hash-table isin: np.isin on object (string) ids takes minutes on 100k rows.
            warm = interactions[USER].isin(interactions[USER].to_numpy()[labels == "train"]).to_numpy()
            drop = (labels != "train") & (~warm if self.users == "warm" else warm)
            labels[drop] = EXCLUDED
        return pd.Series(labels, index=interactions.index)


class LeaveLastOut:
    """Per user, the latest interaction is test and the one before it validation (users with >= 3)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        require_columns(interactions, [TIME], "interactions (leave-last-out split)")
        rng = np.random.default_rng(self.seed)
        order = pd.DataFrame({USER: interactions[USER].to_numpy(), TIME: interactions[TIME].to_numpy(), "tie": rng.random(len(interactions))})
        order = order.sort_values([USER, TIME, "tie"], ascending=[True, False, True], kind="stable")
        from_end = order.groupby(USER, sort=False).cumcount().to_numpy()
        size = order.groupby(USER, sort=False)[USER].transform("size").to_numpy()
        labels = np.where((from_end == 0) & (size >= 2), "test", np.where((from_end == 1) & (size >= 3), "val", "train"))
        return pd.Series(labels, index=order.index).reindex(interactions.index)


class PredefinedSplit:
    """The ``split`` column of the interactions (or separate train/val/test files), as given."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        require_columns(interactions, [SPLIT], "interactions (predefined split)")
        return interactions[SPLIT]


class ColdStartItems:
    """A random ``test`` share of the items (and a ``val`` share of the rest) is never seen in training.

    Every interaction with a test item is test, with a val item validation; the rest is train.
    Evaluate with the datamodule's ``candidates="heldout"``, so each split ranks only its own
    cold items: an id-only model has nothing to go on there, content features must carry it.
    """

    def __init__(self, test: float = 0.2, val: float = 0.1, seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        self.test, self.val, self.seed = test, val, seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        return _hold_out_entities(interactions, ITEM, self.test, self.val, self.seed)


class ColdStartUsers:
    """A random ``test`` share of the users (and a ``val`` share of the rest) is never seen in training.

    The user tower of a cold user has only profile features (its id is out of vocabulary and
    its history empty). With ``reveal`` > 0, each cold user's ``reveal`` earliest interactions
    are train (a few-shot variant: the user then has an id embedding and a short history).
    """

    def __init__(self, test: float = 0.2, val: float = 0.1, reveal: int = 0, seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        if reveal < 0:
            raise ValueError(f"reveal={reveal} interactions per cold user must be >= 0")
        self.test, self.val, self.reveal, self.seed = test, val, reveal, seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        labels = _hold_out_entities(interactions, USER, self.test, self.val, self.seed)
        if self.reveal:
            require_columns(interactions, [TIME], "interactions (cold-start users with reveal)")
            rng = np.random.default_rng(self.seed + 1)
            order = pd.DataFrame({USER: interactions[USER].to_numpy(), TIME: interactions[TIME].to_numpy(), "tie": rng.random(len(interactions))})
            order = order.sort_values([USER, TIME, "tie"], kind="stable")
            first = pd.Series(order.groupby(USER, sort=False).cumcount().to_numpy() < self.reveal, index=order.index).reindex(interactions.index)
            labels = labels.where(~first.to_numpy(), "train")
        return labels


def _hold_out_entities(interactions: pd.DataFrame, column: str, test: float, val: float, seed: int) -> pd.Series:
    """Labels every interaction by the held-out group (test / val / train) of its ``column`` entity."""
    require_columns(interactions, [column], "interactions (cold-start split)")
    entities = np.sort(interactions[column].unique())
    order = np.random.default_rng(seed).permutation(len(entities))
    n_test = int(round(len(entities) * test))
    n_val = int(round((len(entities) - n_test) * val))
    group = np.empty(len(entities), dtype=object)
    group[order[:n_test]] = "test"
    group[order[n_test : n_test + n_val]] = "val"
    group[order[n_test + n_val :]] = "train"
    labels = pd.Series(group, index=entities).reindex(interactions[column].to_numpy()).to_numpy()
    return pd.Series(labels, index=interactions.index)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"split fraction {name}={value} must be in [0, 1)")


# A split chosen by name (data.split=temporal) is the class behind conf/data/split/<name>.yaml,
# with its default shares: the same split as the group option data/split=temporal.
SPLITS_BY_NAME = {
    "random": RandomSplit,
    "hash": HashSplit,
    "temporal": TemporalSplit,
    "leave_last_out": LeaveLastOut,
    "predefined": PredefinedSplit,
    "cold_items": ColdStartItems,
    "cold_users": ColdStartUsers,
}


def split_by_name(name: str, seed: int) -> Callable[[pd.DataFrame], pd.Series]:
    """The split that ``data/split=<name>`` selects, built with its default shares."""
    if name not in SPLITS_BY_NAME:
        raise ValueError(f"data.split='{name}' is not a split; choose one of {', '.join(SPLITS_BY_NAME)} (or give a _target_)")
    return SPLITS_BY_NAME[name](seed=seed)
