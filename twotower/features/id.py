"""``id``: the user's or item's own id, an embedding per id seen in training.

Its vocabulary is the train-split id vocabulary itself, so an id unseen in training (a new user or
item) takes the out-of-vocabulary row. That row starts at zero: an unknown id adds nothing to the
tower's input rather than an untrained random vector, so a new entity is encoded from its content
alone. Without id dropout nothing ever reads it in training and it stays zero (no gradient, and weight
decay keeps zero at zero); with id dropout it is learned from there. Being the entity's identity, it is
what content-only towers drop and what id dropout and new-user rows hide, so that content learns to
stand in for it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import column


class EmbeddingEncoder(nn.Module):
    """``id`` and ``categorical`` features: (B,) int64 -> (B, dim)."""

    def __init__(self, cardinality: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(cardinality, dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)


class OneValueKind(FeatureKind):
    """A kind with one vocabulary index per row, read by an embedding (``id``, ``categorical``)."""

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "cardinality": fitted.cardinality}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return EmbeddingEncoder(spec["cardinality"], spec["dim"])

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long)  # the out-of-vocabulary row


class IdKind(OneValueKind):
    name = "id"
    identity = True

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        if ids is None:
            raise ValueError(f"feature '{spec.name}' of kind id needs the train-split id vocabulary of {table}")
        return FittedFeature(spec, vocab=ids)

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        encoder = super().build_encoder(spec)
        with torch.no_grad():
            encoder.embedding.weight[0].zero_()  # the out-of-vocabulary row: see the module doc
        return encoder

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        return torch.from_numpy(fitted.vocab.lookup(column(frame, fitted.spec, table).tolist()))  # (n,)

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "int64", (None,), "int64 id-vocabulary index, 0 = an id unseen in training")


register_kind(IdKind())
