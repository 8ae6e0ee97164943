"""``categorical``: one value per row (a genre, a country, a zip-code prefix), an embedding per value."""
from __future__ import annotations

import pandas as pd
import torch

from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureSpec, FittedFeature, ServingInput, register_kind
from twotower.features.columns import column, text_cells
from twotower.features.id import OneValueKind


class CategoricalKind(OneValueKind):
    name = "categorical"
    fields = ("prefix", "min_count")

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        return FittedFeature(spec, vocab=Vocabulary.fit(self._values(spec, frame, table).tolist(), spec.min_count))

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        return torch.from_numpy(fitted.vocab.lookup(self._values(fitted.spec, frame, table).tolist()))  # (n,)

    @staticmethod
    def _values(spec: FeatureSpec, frame: pd.DataFrame, table: str) -> pd.Series:
        values = text_cells(column(frame, spec, table), spec, table)
        return values.astype("string").str[: spec.prefix] if spec.prefix else values

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "int64", (None,), "int64 vocabulary index, 0 = out of vocabulary or missing")


register_kind(CategoricalKind())
