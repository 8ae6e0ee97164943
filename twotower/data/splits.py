"""Train/val/test splits of the interactions; each returns one label per row, deterministic for a seed."""
from __future__ import annotations

import numpy as np
import pandas as pd

from twotower.data.tables import SPLIT, TIME, USER, require_columns


class RandomSplit:
    """Per user, a random ``test`` share of their interactions is test; ``val`` of the rest is validation."""

    def __init__(self, test: float = 0.2, val: float = 0.1, seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        self.test, self.val, self.seed = test, val, seed

    def __call__(self, interactions: pd.DataFrame) -> pd.Series:
        rng = np.random.default_rng(self.seed)
        order = pd.DataFrame({USER: interactions[USER].to_numpy(), "key": rng.random(len(interactions))})
        order = order.sort_values([USER, "key"], kind="stable")
        rank = order.groupby(USER, sort=False).cumcount().to_numpy()
        size = order.groupby(USER, sort=False)[USER].transform("size").to_numpy()
        n_test = np.floor(size * self.test + 0.5).astype(int)
        n_val = np.floor((size - n_test) * self.val + 0.5).astype(int)
        labels = np.where(rank < n_test, "test", np.where(rank < n_test + n_val, "val", "train"))
        return pd.Series(labels, index=order.index).reindex(interactions.index)


class TemporalSplit:
    """A global time cut: the latest ``test`` share of interactions is test, the ``val`` share before it validation."""

    def __init__(self, test: float = 0.2, val: float = 0.1, seed: int = 0):
        _check_fraction("test", test)
        _check_fraction("val", val)
        self.test, self.val = test, val

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


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"split fraction {name}={value} must be in [0, 1)")
