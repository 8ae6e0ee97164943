"""Data: sources -> tables -> split -> fitted features -> ``Prepared`` -> batches (see ``twotower.data.datamodule``)."""
from importlib import import_module

# Name -> module, imported on first use. The feature kinds (``twotower.features``) read ``data.vocab``
# and ``data.tables``, and ``data.schema`` and ``data.prepared`` read the kinds: importing the data
# module (and so the schema) here would fail whenever ``twotower.features`` is imported first.
_EXPORTS = {"Batch": "store", "EvalBatch": "store", "FeatureStore": "store", "Prepared": "prepared", "Schema": "schema",
            "TwoTowerDataModule": "datamodule"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"twotower.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'twotower.data' has no attribute {name!r}")
