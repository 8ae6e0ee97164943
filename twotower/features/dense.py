"""``dense``: a precomputed vector per row (e.g. a sentence embedding), projected by a linear layer."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import check_missing, column


class DenseEncoder(nn.Module):
    """``dense`` precomputed vectors (B, d), e.g. sentence embeddings, projected to (B, dim)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DenseKind(FeatureKind):
    name = "dense"
    fields = ("missing",)

    def check(self, spec: FeatureSpec) -> None:
        check_missing(spec)

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        first = next((v for v in column(frame, spec, table) if v is not None and np.ndim(v) > 0), None)
        if first is None:
            raise ValueError(f"{table}: dense column '{spec.source_column}' holds no vectors")
        return FittedFeature(spec, dim=int(np.asarray(first).size))

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        spec = fitted.spec
        values = column(frame, spec, table)
        out = np.zeros((len(values), fitted.dim), dtype=np.float32)
        for row, v in enumerate(values):
            if v is None or (np.ndim(v) == 0 and pd.isna(v)):
                if spec.missing == "error":
                    raise ValueError(f"{table}: dense column '{spec.source_column}' is missing at row {row}")
                continue  # a missing vector is zeros
            vec = np.asarray(v, dtype=np.float32).reshape(-1)
            if vec.shape[0] != fitted.dim:
                raise ValueError(f"{table}: dense column '{spec.source_column}' row {row} has dim {vec.shape[0]}, expected {fitted.dim}")
            if not np.isfinite(vec).all():
                raise ValueError(f"{table}: dense column '{spec.source_column}' row {row} has NaN/inf")
            out[row] = vec
        return torch.from_numpy(out)  # (n, dim)

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "in_dim": fitted.dim}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return DenseEncoder(spec["in_dim"], spec["dim"])

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, fitted.dim)  # a missing vector

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "float32", (None, fitted.dim), f"float32 the {fitted.dim}-d vector as given, zeros = missing")


register_kind(DenseKind())
