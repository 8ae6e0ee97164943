"""Small stand-ins for the data the README's commands read, in the same layouts and columns.

The doc test (tests/test_readme_commands.py) runs the README's commands on these, so nothing is
downloaded and every command finishes in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twotower.datasets.movielens.source import EXPECTED_COUNTS, GENRES

OCCUPATIONS = ("student", "engineer", "educator", "writer", "artist", "doctor", "other")
COUNTRIES = ("DE", "FR", "US", "JP", "BR")
TOPICS = ("news", "sports", "tech", "music", "travel", "food")
WORDS = ("local", "team", "wins", "new", "phone", "released", "city", "plans", "market", "opens", "band", "tour")


def write_movielens(directory: Path, seed: int = 0) -> Path:
    """A synthetic ``ml-100k`` directory in GroupLens' layout, as ``MovieLens100K`` reads it.

    The reader checks the published counts (943 users, 1,682 items, 100,000 ratings) to catch a
    damaged copy, so the stand-in has exactly those counts; its values are random. Each user
    rates items of one favourite genre more often, so a trained model has something to find.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items, n_ratings = EXPECTED_COUNTS["users"], EXPECTED_COUNTS["items"], EXPECTED_COUNTS["ratings"]
    directory.mkdir(parents=True, exist_ok=True)

    genre_of = rng.integers(1, len(GENRES), n_items)  # one genre per item (0 = "unknown" stays unused)
    flags = np.zeros((n_items, len(GENRES)), dtype=int)
    flags[np.arange(n_items), genre_of] = 1
    years = rng.integers(1930, 1999, n_items)
    items = pd.DataFrame({
        "item_id": np.arange(1, n_items + 1),
        "title": [f"{WORDS[i % len(WORDS)].title()} {GENRES[g]} ({y})" for i, (g, y) in enumerate(zip(genre_of, years))],
        "release_date": [f"01-Jan-{y}" for y in years],
        "video_release_date": "",
        "imdb_url": [f"http://us.imdb.com/M/title-exact?{i}" for i in range(1, n_items + 1)],
    })
    items = pd.concat([items, pd.DataFrame(flags, columns=list(GENRES))], axis=1)
    items.to_csv(directory / "u.item", sep="|", header=False, index=False, encoding="latin-1")

    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1),
        "age": rng.integers(15, 70, n_users),
        "gender": rng.choice(["M", "F"], n_users),
        "occupation": rng.choice(OCCUPATIONS, n_users),
        "zip_code": [f"{z:05d}" for z in rng.integers(0, 99999, n_users)],
    })
    users.to_csv(directory / "u.user", sep="|", header=False, index=False)

    # Ratings per user: an even share, the remainder spread one each over the first users.
    per_user = np.full(n_users, n_ratings // n_users)
    per_user[: n_ratings - per_user.sum()] += 1
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    favourite = rng.integers(1, len(GENRES), n_users)
    rows = []
    for user, (count, genre) in enumerate(zip(per_user, favourite), start=1):
        weights = popularity * np.where(genre_of == genre, 8.0, 1.0)
        chosen = rng.choice(n_items, size=count, replace=False, p=weights / weights.sum()) + 1
        rows.append(np.column_stack([np.full(count, user), chosen]))
    pairs = np.concatenate(rows)
    ratings = pd.DataFrame({
        "user_id": pairs[:, 0],
        "item_id": pairs[:, 1],
        "rating": rng.integers(1, 6, len(pairs)),
        "timestamp": rng.integers(874_724_710, 893_286_638, len(pairs)),
    })
    ratings.to_csv(directory / "u.data", sep="\t", header=False, index=False)
    return directory


def own_tables(n_users: int = 200, n_items: int = 120, per_user: int = 12, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The README's own-tables example at a size a split leaves non-empty: the same columns as
    ``clicks.csv`` (uid, iid, ts), ``users.csv`` (uid, age, country) and ``items.csv``
    (iid, genres, title, price), with ids written like the README's (u1, i1, ...)."""
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, len(TOPICS), n_items)
    items = pd.DataFrame({
        "iid": [f"i{i}" for i in range(1, n_items + 1)],
        "genres": ["|".join(sorted({TOPICS[t], TOPICS[rng.integers(len(TOPICS))]})) for t in item_topic],
        "title": [" ".join(rng.choice(WORDS, 3)) for _ in range(n_items)],
        "price": rng.choice([0.0, 0.99, 4.5, 19.0], n_items),
    })
    users = pd.DataFrame({
        "uid": [f"u{u}" for u in range(1, n_users + 1)],
        "age": rng.integers(18, 80, n_users),
        "country": rng.choice(COUNTRIES, n_users),
    })
    favourite = rng.integers(0, len(TOPICS), n_users)
    rows = []
    for user, topic in enumerate(favourite, start=1):
        weights = np.where(item_topic == topic, 6.0, 1.0)
        for item in rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum()):
            rows.append((f"u{user}", f"i{item + 1}", int(rng.integers(1_700_000_000, 1_700_900_000))))
    clicks = pd.DataFrame(rows, columns=["uid", "iid", "ts"])
    return {"clicks": clicks, "users": users, "items": items}


def write_own_tables(directory: Path, split: str | None = None) -> dict[str, Path]:
    """``own_tables()`` as the README's ``clicks.csv``, ``users.csv`` and ``items.csv``.

    Args:
        split: ``"column"`` adds a ``split`` column (train/val/test) to ``clicks.csv``; ``"files"``
            writes ``train.csv``, ``val.csv`` and ``test.csv`` instead of ``clicks.csv``.
    """
    frames = own_tables()
    clicks = frames.pop("clicks")
    # Per row, not per user: a predefined split is taken as given, whatever its shape.
    labels = np.random.default_rng(1).choice(["train", "val", "test"], size=len(clicks), p=[0.7, 0.15, 0.15])
    if split == "column":
        frames["clicks"] = clicks.assign(split=labels)
    elif split == "files":
        frames.update({part: clicks[labels == part] for part in ("train", "val", "test")})
    else:
        frames["clicks"] = clicks
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.csv" for name in frames}
    for name, frame in frames.items():
        frame.to_csv(paths[name], index=False)
    return paths


def write_shards(directory: Path, files: int = 4, row_group_rows: int = 150) -> dict[str, Path]:
    """``own_tables()`` as ``clicks/`` (parquet shards of several row groups each, which the sharded
    path divides among processes), ``users.parquet`` and ``items.parquet``."""
    frames = own_tables()
    clicks = directory / "clicks"
    clicks.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frames["clicks"]), files + 1).astype(int)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        frames["clicks"].iloc[start:stop].to_parquet(clicks / f"part-{number:03d}.parquet", index=False, row_group_size=row_group_rows)
    paths = {"clicks": clicks}
    for name in ("users", "items"):
        paths[name] = directory / f"{name}.parquet"
        frames[name].to_parquet(paths[name], index=False)
    return paths
