"""``multi_hot``: a set of tags per row (``"Action|Comedy"`` or a list), the mean of the tags' embeddings."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from twotower.data.vocab import Vocabulary, split_tags
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import column

DEFAULT_MAX_LEN = 8


class MultiHotEncoder(nn.Module):
    """``multi_hot`` tags (B, max_len) int64, 0-padded -> mean of the tags' embeddings (B, dim); no tag -> zeros."""

    def __init__(self, cardinality: int, dim: int):
        super().__init__()
        # EmbeddingBag pools without materialising (B, L, dim); padding_idx rows are left out of the mean.
        self.embedding = nn.EmbeddingBag(cardinality, dim, mode="mean", padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)


class MultiHotKind(FeatureKind):
    name = "multi_hot"
    fields = ("separator", "max_len", "min_count")

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        lists = [split_tags(v, spec.separator) for v in column(frame, spec, table)]
        vocab = Vocabulary.fit((t for tags in lists for t in tags), spec.min_count)
        longest = max((len(tags) for tags in lists), default=1)
        return FittedFeature(spec, vocab=vocab, max_len=max(1, min(longest, spec.max_len or DEFAULT_MAX_LEN)))

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        lists = (split_tags(v, fitted.spec.separator) for v in column(frame, fitted.spec, table))
        return torch.from_numpy(fitted.vocab.lookup_lists(lists, fitted.max_len))  # (n, max_len)

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "cardinality": fitted.cardinality}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return MultiHotEncoder(spec["cardinality"], spec["dim"])

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, fitted.max_len, dtype=torch.long)  # no tag

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "int64", (None, fitted.max_len),
                            "int64 tag-vocabulary indices, 0-padded on the right; unknown tags left out")


register_kind(MultiHotKind())
