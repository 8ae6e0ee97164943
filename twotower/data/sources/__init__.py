"""Data sources of any data set: each returns validated ``Tables`` (interactions, users, items).

Public data sets have their sources in ``twotower.datasets``; parquet shards in
``twotower.data.streaming``.
"""
from twotower.data.sources.skewed import SkewedSource
from twotower.data.sources.synthetic import SyntheticSource
from twotower.data.sources.tables import TableSource

__all__ = ["SkewedSource", "SyntheticSource", "TableSource"]
