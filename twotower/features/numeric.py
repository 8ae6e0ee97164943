"""``numeric``: a number per row, standardised with the train split's mean and std (optionally after log1p).

The tower holds the standardisation: its input is the raw number, and the encoder applies log1p,
standardises and clips to the range seen in training. So every program exported from the tower
(ONNX, ``torch.export``, TorchScript) takes the number as the users or items table has it, a client
feeds NaN for a missing value, and a value outside the training range (a release year after the
data ends) does not extrapolate.
"""
from __future__ import annotations

import math
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
    """``numeric`` (B,) raw floats -> (B, 1) standardised, clipped to the training range; NaN (missing) -> 0, the train mean.

    Args:
        mean, std: of the (log1p-transformed, where ``log1p``) train-split values.
        low, high: the smallest and largest of those values; ``None``: no clipping on that side.
    """

    out_dim = 1

    def __init__(self, mean: float = 0.0, std: float = 1.0, low: float | None = None, high: float | None = None, log1p: bool = False):
        super().__init__()
        self.mean, self.std, self.log1p = float(mean), float(std), bool(log1p)
        # Bounds as standardised values; plain floats, so they are constants of any exported graph.
        self.low = -math.inf if low is None else (float(low) - self.mean) / self.std
        self.high = math.inf if high is None else (float(high) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log1p:
            x = torch.log1p(x.clamp(min=0.0))
        z = (x - self.mean) / self.std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        return z.clamp(self.low, self.high).unsqueeze(-1)


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
        return FittedFeature(spec, mean=mean, std=std if std > 0 else 1.0, state={"min": float(finite.min()), "max": float(finite.max())})

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        spec = fitted.spec
        x = as_float(column(frame, spec, table), spec, table)
        if spec.transform == "log1p":
            negative = x < 0  # NaN compares False
            if negative.any():
                row = int(np.argmax(negative))
                raise ValueError(f"{table}: column '{spec.source_column}' has a negative value {x[row]} at row {row}; log1p needs >= 0")
        missing = np.isnan(x)
        if missing.any():
            if spec.missing == "error":
                row = int(np.argmax(missing))
                raise ValueError(
                    f"{table}: numeric column '{spec.source_column}' has {int(missing.sum())} missing/NaN value(s), "
                    f"first at row {row} (set missing: mean or zero on feature '{spec.name}' to fill them)"
                )
            x = np.where(missing, self._raw_mean(fitted) if spec.missing == "mean" else 0.0, x)
        with np.errstate(over="ignore"):
            raw = x.astype(np.float32)
        overflow = ~np.isfinite(raw)
        if overflow.any():
            row = int(np.argmax(overflow))
            raise ValueError(f"{table}: numeric column '{spec.source_column}' value {x[row]:g} at row {row} is too large to be a float32 feature")
        return torch.from_numpy(raw)  # (n,) raw: the encoder standardises

    @staticmethod
    def _raw_mean(fitted: FittedFeature) -> float:
        """The raw value the encoder standardises to 0 (the train mean, before log1p where set)."""
        return math.expm1(fitted.mean) if fitted.spec.transform == "log1p" else fitted.mean

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "standardise": standardisation(fitted)}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        if "standardise" not in spec:
            raise ValueError(f"numeric feature '{spec.get('name')}' has no 'standardise' entry in its tower config: the config was written "
                             "by a twotower that standardised numbers outside the tower; train (or export) again with this version")
        return NumericEncoder(**spec["standardise"])

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.full((n,), math.nan)  # missing: the encoder reads it as the train mean

    def forget(self, features: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> None:
        features[name] = features[name].masked_fill(rows, math.nan)

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "float32", (None,), "float32 raw value as in the table, NaN = missing (the tower "
                            "applies log1p where set, standardises and clips to the training range)", standardisation(fitted))


def standardisation(fitted: FittedFeature) -> dict[str, Any]:
    """What the encoder does to a raw value: ``NumericEncoder``'s arguments (also the serving signature's record of it)."""
    return {"log1p": fitted.spec.transform == "log1p", "mean": fitted.mean, "std": fitted.std,
            "low": fitted.state.get("min"), "high": fitted.state.get("max")}


register_kind(NumericKind())
