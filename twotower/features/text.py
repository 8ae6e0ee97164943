"""``text``: a string per row, as word tokens -> embeddings -> (optional transformer layers) -> pooled vector.

Tokens come from a vocabulary fitted on train (unseen words dropped), or with ``hash_buckets`` from
a stable hash of the word, so words first seen after training (fresh news) still get an embedding.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from twotower.data.vocab import Vocabulary, hashed_ids, tokenize
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import column, text_cells

DEFAULT_MAX_LEN = 16


class TextEncoder(nn.Module):
    """``text`` features: (B, max_len) token ids, 0-padded -> (B, dim).

    Args:
        pooling: ``mean`` (EmbeddingBag, no (B, L, dim) tensor) or ``attention`` (additive attention,
            as in NRMS/LSTUR news encoders).
        transformer_layers: self-attention layers over the tokens before pooling (0: bag of words).
    """

    def __init__(self, cardinality: int, dim: int, pooling: str = "mean", transformer_layers: int = 0, heads: int = 2, max_len: int = 64):
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"text pooling '{pooling}' is not one of mean, attention")
        self.embedding = nn.Embedding(cardinality, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.pooling, self.out_dim = pooling, dim
        self.encoder = None
        if transformer_layers:
            self.position = nn.Embedding(max_len, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.1, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, transformer_layers, enable_nested_tensor=False)
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.encoder is None and self.pooling == "mean":
            return F.embedding_bag(tokens, self.embedding.weight, mode="mean", padding_idx=0, sparse=self.embedding.sparse)
        pad = tokens == 0  # (B, L)
        x = self.embedding(tokens)  # (B, L, dim)
        if self.encoder is not None:
            x = x + self.position(torch.arange(tokens.shape[1], device=tokens.device))
            mask = pad.clone()
            # A row of only padding would attend to nothing (NaN); let it attend to position 0.
            mask[:, 0] &= ~pad.all(1)
            x = self.encoder(x, src_key_padding_mask=mask)
        if self.pooling == "mean":
            weights = (~pad).float() / (~pad).sum(1, keepdim=True).clamp(min=1)
        else:
            weights = torch.softmax(self.attention(x).squeeze(-1).masked_fill(pad, float("-inf")), -1).nan_to_num(0.0)
        return torch.einsum("bl,bld->bd", weights, x)  # empty text: all weights 0 -> zero vector


class TextKind(FeatureKind):
    name = "text"
    fields = ("max_len", "min_count", "hash_buckets")

    def check(self, spec: FeatureSpec) -> None:
        if spec.hash_buckets is not None and spec.hash_buckets < 1:
            raise ValueError(f"feature '{spec.name}': hash_buckets={spec.hash_buckets} needs a positive count")

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        lists = [tokenize(v) for v in text_cells(column(frame, spec, table), spec, table)]
        vocab = None if spec.hash_buckets else Vocabulary.fit((t for tokens in lists for t in tokens), spec.min_count)
        longest = max((len(tokens) for tokens in lists), default=1)
        return FittedFeature(spec, vocab=vocab, max_len=max(1, min(longest, spec.max_len or DEFAULT_MAX_LEN)))

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        spec = fitted.spec
        lists = (tokenize(v) for v in text_cells(column(frame, spec, table), spec, table))
        if spec.hash_buckets:
            return torch.from_numpy(hashed_ids(lists, spec.hash_buckets, fitted.max_len))  # (n, max_len)
        return torch.from_numpy(fitted.vocab.lookup_lists(lists, fitted.max_len))  # (n, max_len)

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        # max_len sizes the transformer's position table: the tokens the transform keeps.
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "cardinality": fitted.cardinality,
                "options": {**options, "max_len": fitted.max_len}}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return TextEncoder(spec["cardinality"], spec["dim"], **spec.get("options", {}))

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, fitted.max_len, dtype=torch.long)  # no token: the zero vector

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        tokens = f"1 + crc32(word) % {fitted.spec.hash_buckets}" if fitted.spec.hash_buckets else "word-vocabulary indices (unknown words left out)"
        return ServingInput(fitted.spec.name, "int64", (None, fitted.max_len), f"int64 {tokens} of the lower-cased words, 0-padded on the right")


register_kind(TextKind())
