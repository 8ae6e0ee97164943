"""A tower: one encoder per feature, concatenated, an MLP, L2-normalised output."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twotower.features import build_encoder
from twotower.features.base import Features
from twotower.model.saving import SavedTower, tower_type


@tower_type("profile")
class Tower(SavedTower):
    """Encodes a dict of feature tensors into unit vectors (a profile tower: every input a feature of the entity).

    Args:
        features: one dict per input feature: ``name``, ``kind`` and the encoder's arguments
            (``cardinality``, ``dim``, ``in_dim``, ``options``), as the kind's ``encoder_spec`` writes them.
        hidden_dims: widths of the hidden layers of the MLP.
        output_dim: size of the output vector.
        dropout: dropout after each hidden layer.
        normalize: L2-normalise the output (cosine similarity, as the loss and index expect).
    """

    def __init__(self, features: Sequence[dict[str, Any]], hidden_dims: Sequence[int] = (256,), output_dim: int = 64, dropout: float = 0.0, normalize: bool = True):
        super().__init__()
        self.config = {"type": self.type_name, "features": [dict(f) for f in features], "hidden_dims": list(hidden_dims), "output_dim": output_dim, "dropout": dropout, "normalize": normalize}
        self.encoders = build_encoders(features)
        self.mlp = build_mlp(sum(e.out_dim for e in self.encoders.values()), hidden_dims, output_dim, dropout)
        self.normalize, self.output_dim = normalize, output_dim

    def forward(self, features: Features) -> torch.Tensor:
        missing = [name for name in self.encoders if name not in features]
        if missing:
            raise KeyError(f"tower inputs lack feature(s) {missing} (given: {sorted(features)})")
        x = torch.cat([encoder(features[name]) for name, encoder in self.encoders.items()], dim=-1)
        x = self.mlp(x)
        return F.normalize(x, dim=-1) if self.normalize else x


def build_encoders(features: Sequence[dict[str, Any]]) -> nn.ModuleDict:
    """One encoder per feature dict (``name``, ``kind`` and the kind's arguments, as its ``encoder_spec`` wrote them)."""
    return nn.ModuleDict({f["name"]: build_encoder(f) for f in features})


def build_mlp(width: int, hidden_dims: Sequence[int], output_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> GELU -> Dropout per hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)
