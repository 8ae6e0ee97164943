"""Synthetic users, items and interactions with planted structure, for tests and benchmarks.

Each user likes one or two genres (and the user's ``segment`` feature reveals the first); items
have genres, popularity following a power law, and titles drawn from per-genre words. A user's
interactions come from their genres with probability ``signal``, else from the whole catalogue by
popularity. A model that learns the structure beats popularity; one that does not, does not.
"""
from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd

from twotower.constraints import AT_LEAST_0, AT_LEAST_1, PROBABILITY, SEED
from twotower.data.tables import ITEM, TIME, USER, Tables


class SyntheticSource:
    def __init__(
        self,
        n_users: Annotated[int, AT_LEAST_1] = 500,
        n_items: Annotated[int, AT_LEAST_1] = 300,
        n_genres: Annotated[int, AT_LEAST_1] = 8,
        interactions_per_user: Annotated[int, AT_LEAST_1] = 20,
        signal: Annotated[float, PROBABILITY] = 0.85,
        popularity_exponent: Annotated[float, AT_LEAST_0] = 1.0,
        seed: Annotated[int, SEED] = 0,
    ):
        self.n_users, self.n_items, self.n_genres = n_users, n_items, n_genres
        self.per_user, self.signal, self.exponent, self.seed = interactions_per_user, signal, popularity_exponent, seed

    def load(self) -> Tables:
        rng = np.random.default_rng(self.seed)
        g = self.n_genres
        item_genre = rng.integers(0, g, self.n_items)
        second = rng.integers(0, g, self.n_items)
        popularity = 1.0 / np.arange(1, self.n_items + 1) ** self.exponent
        popularity = rng.permutation(popularity)
        words = [[f"g{k}w{j}" for j in range(6)] for k in range(g)]
        titles = [" ".join(rng.choice(words[k], 3)) for k in item_genre]
        items = pd.DataFrame({
            ITEM: np.arange(self.n_items),
            "genres": [f"G{a}" if a == b else f"G{a}|G{b}" for a, b in zip(item_genre, second)],
            "title": titles,
            "price": rng.lognormal(2.0, 0.5, self.n_items).round(2),
        })
        user_genres = np.stack([rng.integers(0, g, self.n_users), rng.integers(0, g, self.n_users)], axis=1)
        users = pd.DataFrame({
            USER: np.arange(self.n_users),
            "segment": [f"S{a}" for a in user_genres[:, 0]],
            "age": rng.integers(18, 70, self.n_users),
        })
        rows = []
        for u in range(self.n_users):
            liked = np.isin(item_genre, user_genres[u])
            p_liked = popularity * liked
            p_liked /= p_liked.sum()
            p_any = popularity / popularity.sum()
            p = self.signal * p_liked + (1 - self.signal) * p_any
            chosen = rng.choice(self.n_items, size=min(self.per_user, int((p > 0).sum())), replace=False, p=p)
            rows.append(np.stack([np.full(len(chosen), u), chosen, rng.integers(0, 10**6, len(chosen))], axis=1))
        inter = pd.DataFrame(np.concatenate(rows), columns=[USER, ITEM, TIME])
        names = {"interactions": "synthetic interactions", "users": "synthetic users", "items": "synthetic items"}
        return Tables(inter, users, items, names).validate()
