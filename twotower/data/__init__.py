"""Data: sources -> tables -> split -> fitted features -> FeatureStore -> Batch."""
from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.sharded_datamodule import ShardedDataModule
from twotower.data.schema import FeatureSpec, Schema
from twotower.data.store import Batch, EvalBatch, FeatureStore

__all__ = ["Batch", "EvalBatch", "FeatureSpec", "FeatureStore", "Schema", "ShardedDataModule", "TwoTowerDataModule"]
