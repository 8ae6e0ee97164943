"""``categorical``: one value per row (a genre, a country, a zip-code prefix), an embedding per value."""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import torch
from torch import nn

from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import column, text_cells
from twotower.features.id import EmbeddingEncoder


class CategoricalKind(FeatureKind):
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

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "cardinality": fitted.cardinality}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return EmbeddingEncoder(spec["cardinality"], spec["dim"])

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long)  # the out-of-vocabulary row

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "int64", (None,), "int64 vocabulary index, 0 = out of vocabulary or missing")


register_kind(CategoricalKind())
