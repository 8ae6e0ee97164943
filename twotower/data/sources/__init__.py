"""Data sources: each returns validated ``Tables`` (interactions, users, items)."""
from twotower.data.sources.movielens import MovieLens100K
from twotower.data.sources.shards import ShardSource
from twotower.data.sources.skewed import SkewedSource
from twotower.data.sources.synthetic import SyntheticSource
from twotower.data.sources.tables import TableSource

__all__ = ["MovieLens100K", "ShardSource", "SkewedSource", "SyntheticSource", "TableSource"]
