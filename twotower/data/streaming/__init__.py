"""Interactions too big for one process: parquet shards, scanned once at set-up and streamed per process in training."""
from twotower.data.streaming.source import ShardSource

__all__ = ["ShardSource"]
