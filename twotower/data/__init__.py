"""Data: sources -> tables -> split -> fitted features -> FeatureStore -> Batch."""
from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.schema import FeatureSpec, Schema
from twotower.data.store import Batch, EvalBatch, FeatureStore

__all__ = ["Batch", "EvalBatch", "FeatureSpec", "FeatureStore", "Schema", "TwoTowerDataModule"]
