"""The vectorised skewed synthetic source (twotower.data.sources.SkewedSource)."""
import numpy as np
import pytest

from twotower.data.sources import SkewedSource


def test_tables_have_the_asked_sizes_and_feature_shapes():
    tables = SkewedSource(n_users=300, n_items=200, n_interactions=5_000, n_genres=20, genres_per_item=3, seed=1).load()
    assert (len(tables.users), len(tables.items), len(tables.interactions)) == (300, 200, 5_000)
    assert list(tables.users.columns) == ["user_id", "segment", "country"]
    assert list(tables.items.columns) == ["item_id", "category", "genres"]
    genres = tables.items["genres"].str.split("|")
    assert genres.map(len).eq(3).all() and genres.map(lambda g: len(set(g))).eq(3).all()  # 3 distinct genres each
    assert set(g for row in genres for g in row) <= {f"G{k}" for k in range(20)}


def test_popularity_is_skewed_and_users_prefer_their_segment():
    source = SkewedSource(n_users=2_000, n_items=2_000, n_interactions=200_000, n_genres=10, signal=0.8, seed=0)
    a = source.generate()
    counts = np.bincount(a.items, minlength=2_000)
    assert counts.max() > 50 * np.median(counts)  # Zipf: the head item dwarfs the median one
    in_segment = (a.genres[a.items, 0] == a.segment[a.users]).mean()
    # 0.8 from the preferred genre, plus the 0.2 drawn by popularity that land there by chance (~1/10).
    assert in_segment == pytest.approx(0.8 + 0.2 * 0.1, abs=0.03)


def test_same_seed_same_tables_other_seed_other_tables():
    first, again, other = (SkewedSource(100, 100, 1_000, seed=s).generate() for s in (3, 3, 4))
    assert np.array_equal(first.items, again.items) and np.array_equal(first.genres, again.genres)
    assert not np.array_equal(first.items, other.items)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match=r"genres_per_item=4 must be in \[1, n_genres=3\]"):
        SkewedSource(n_genres=3, genres_per_item=4)
    with pytest.raises(ValueError, match="n_interactions=0"):
        SkewedSource(n_interactions=0)
