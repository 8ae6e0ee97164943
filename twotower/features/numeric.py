"""``numeric``: a number per row, standardised with the train split's mean and std (optionally after log1p)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import as_float, check_missing, column

TRANSFORMS = (None, "log1p")


class NumericEncoder(nn.Module):
    """``numeric`` (B,) standardised floats -> (B, 1)."""

    out_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1)


class NumericKind(FeatureKind):
    name = "numeric"
    fields = ("missing", "transform")

    def check(self, spec: FeatureSpec) -> None:
        check_missing(spec)
        if spec.transform not in TRANSFORMS:
            raise ValueError(f"feature '{spec.name}': transform='{spec.transform}' is not one of null, log1p")

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        x = as_float(column(frame, spec, table), spec, table)
        if spec.transform == "log1p":
            x = np.log1p(np.clip(x, 0, None))
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            raise ValueError(f"{table}: numeric column '{spec.source_column}' has no finite values in the train split")
        with np.errstate(over="ignore"):
            mean, std = float(finite.mean()), float(finite.std())
        if not (np.isfinite(mean) and np.isfinite(std)):
            raise ValueError(f"{table}: numeric column '{spec.source_column}' has values too large to standardise "
                             f"(largest magnitude {np.abs(finite).max():g}); rescale it or use transform: log1p")
        return FittedFeature(spec, mean=mean, std=std if std > 0 else 1.0)

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        spec = fitted.spec
        x = as_float(column(frame, spec, table), spec, table)
        if spec.transform == "log1p":
            negative = x < 0  # NaN compares False
            if negative.any():
                row = int(np.argmax(negative))
                raise ValueError(f"{table}: column '{spec.source_column}' has a negative value {x[row]} at row {row}; log1p needs >= 0")
            x = np.log1p(x)
        missing = np.isnan(x)
        if missing.any():
            if spec.missing == "error":
                row = int(np.argmax(missing))
                raise ValueError(
                    f"{table}: numeric column '{spec.source_column}' has {int(missing.sum())} missing/NaN value(s), "
                    f"first at row {row} (set missing: mean or zero on feature '{spec.name}' to fill them)"
                )
            x = np.where(missing, fitted.mean if spec.missing == "mean" else 0.0, x)
        with np.errstate(over="ignore"):
            scaled = ((x - fitted.mean) / fitted.std).astype(np.float32)
        overflow = ~np.isfinite(scaled)
        if overflow.any():
            row = int(np.argmax(overflow))
            raise ValueError(f"{table}: numeric column '{spec.source_column}' value {x[row]:g} at row {row} is too far from the "
                             f"train mean {fitted.mean:g} (std {fitted.std:g}) to be a float32 feature")
        return torch.from_numpy(scaled)  # (n,)

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return NumericEncoder()

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n)  # standardised: the train mean

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        transform = "log1p, then " if fitted.spec.transform == "log1p" else ""
        return ServingInput(fitted.spec.name, "float32", (None,),
                            f"float32 {transform}(x - {fitted.mean:g}) / {fitted.std:g}, 0 = the train mean")


register_kind(NumericKind())
