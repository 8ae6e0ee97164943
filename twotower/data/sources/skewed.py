"""Large synthetic tables with skewed popularity, generated vectorised (1M x 1M x 20M in seconds).

``SyntheticSource`` draws each user's items in a Python loop, fine for tests and far too slow for
benchmark sizes. Here every draw is one numpy call over all interactions: items follow a Zipf
popularity law, users a milder activity skew, and each user's ``segment`` names a preferred genre
from which a ``signal`` share of their items is drawn (by popularity within the genre), so the
tables carry structure a model can learn.

Users: ``user_id``, ``segment`` (the preferred genre), ``country`` (Zipf over ``n_countries``).
Items: ``item_id``, ``category`` (Zipf over ``n_categories``), ``genres`` (``genres_per_item``
distinct genres of ``n_genres``, the first being the primary genre, ``|``-joined).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.data.tables import ITEM, USER, Tables


@dataclass
class SkewedArrays:
    """The generated tables as 0-based integer codes: per user, per item, and per interaction."""

    segment: np.ndarray  # (n_users,) preferred genre
    country: np.ndarray  # (n_users,)
    category: np.ndarray  # (n_items,)
    genres: np.ndarray  # (n_items, genres_per_item), distinct; column 0 = primary genre
    users: np.ndarray  # (n_interactions,) user row
    items: np.ndarray  # (n_interactions,) item row


class SkewedSource:
    """Args:
    n_users, n_items, n_interactions: table sizes.
    n_genres, genres_per_item: the multi-hot item feature (``genres_per_item`` of ``n_genres``).
    n_categories, n_countries: cardinalities of the categorical features.
    item_exponent: Zipf exponent of item popularity (1.0: the k-th item is k times rarer than the first).
    user_exponent: Zipf exponent of user activity.
    signal: share of interactions drawn from the user's preferred genre.
    seed: everything is a function of it.
    """

    def __init__(
        self,
        n_users: int = 10_000,
        n_items: int = 10_000,
        n_interactions: int = 200_000,
        n_genres: int = 20,
        genres_per_item: int = 3,
        n_categories: int = 100,
        n_countries: int = 50,
        item_exponent: float = 1.0,
        user_exponent: float = 0.5,
        signal: float = 0.8,
        seed: int = 0,
    ):
        if not 1 <= genres_per_item <= n_genres:
            raise ValueError(f"genres_per_item={genres_per_item} must be in [1, n_genres={n_genres}]")
        if min(n_users, n_items, n_interactions) < 1:
            raise ValueError(f"sizes must be positive: n_users={n_users}, n_items={n_items}, n_interactions={n_interactions}")
        self.n_users, self.n_items, self.n_interactions = n_users, n_items, n_interactions
        self.n_genres, self.genres_per_item = n_genres, genres_per_item
        self.n_categories, self.n_countries = n_categories, n_countries
        self.item_exponent, self.user_exponent, self.signal, self.seed = item_exponent, user_exponent, signal, seed

    def generate(self) -> SkewedArrays:
        """The tables as integer arrays (0-based codes), for code that needs no DataFrames."""
        rng = np.random.default_rng(self.seed)
        genres = self._item_genres(rng)  # (n_items, genres_per_item); column 0 = primary genre
        segment = rng.integers(0, self.n_genres, self.n_users)
        country = _zipf_draws(rng, self.n_countries, 1.0, self.n_users)
        category = _zipf_draws(rng, self.n_categories, 1.0, self.n_items)
        users = _zipf_draws(rng, self.n_users, self.user_exponent, self.n_interactions)
        items = self._draw_items(rng, genres[:, 0], segment[users])
        return SkewedArrays(segment, country, category, genres, users, items)

    def load(self) -> Tables:
        a = self.generate()
        users = pd.DataFrame({USER: np.arange(self.n_users), "segment": _names("G", a.segment), "country": _names("C", a.country)})
        genre_names = _names("G", np.arange(self.n_genres)).astype(object)
        items = pd.DataFrame({
            ITEM: np.arange(self.n_items),
            "category": _names("K", a.category),
            "genres": ["|".join(row) for row in genre_names[a.genres]],
        })
        interactions = pd.DataFrame({USER: a.users, ITEM: a.items})
        names = {"interactions": "skewed synthetic interactions", "users": "skewed synthetic users", "items": "skewed synthetic items"}
        return Tables(interactions, users, items, names).validate()

    def _item_genres(self, rng: np.random.Generator) -> np.ndarray:
        """``genres_per_item`` distinct genres per item: the smallest keys of random scores, without a loop."""
        scores = rng.random((self.n_items, self.n_genres), dtype=np.float32)
        return np.argpartition(scores, self.genres_per_item - 1, axis=1)[:, : self.genres_per_item]

    def _draw_items(self, rng: np.random.Generator, primary: np.ndarray, preferred: np.ndarray) -> np.ndarray:
        """One item per interaction, by popularity: within the preferred genre with probability ``signal``.

        Items sorted by primary genre make each genre one block of the popularity CDF, so a draw
        within a genre is a uniform draw over that block's mass followed by one searchsorted.
        """
        popularity = rng.permutation(1.0 / np.arange(1, self.n_items + 1) ** self.item_exponent)
        order = np.argsort(primary, kind="stable")
        cdf = np.cumsum(popularity[order])
        block_end = np.searchsorted(primary[order], np.arange(self.n_genres), side="right")
        mass_end = np.where(block_end > 0, cdf[np.maximum(block_end - 1, 0)], 0.0)
        mass_start = np.concatenate([[0.0], mass_end[:-1]])
        in_genre = rng.random(len(preferred)) < self.signal
        # A genre with no items falls back to the whole catalogue.
        in_genre &= (mass_end - mass_start)[preferred] > 0
        low = np.where(in_genre, mass_start[preferred], 0.0)
        high = np.where(in_genre, mass_end[preferred], cdf[-1])
        target = low + rng.random(len(preferred)) * (high - low)
        position = np.minimum(np.searchsorted(cdf, target, side="right"), self.n_items - 1)
        return order[position]


def _zipf_draws(rng: np.random.Generator, n: int, exponent: float, size: int) -> np.ndarray:
    """``size`` draws from ``range(n)`` with P(k-th most popular) proportional to 1 / k**exponent, in shuffled order."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    cdf = np.cumsum(weights)
    ranks = np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), n - 1)
    return rng.permutation(n)[ranks]


def _names(prefix: str, codes: np.ndarray) -> np.ndarray:
    return np.char.add(prefix, codes.astype(str))
