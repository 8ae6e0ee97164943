"""One encoder per feature kind; each maps its batch tensor to a (B, out_dim) float tensor.

Index 0 is the out-of-vocabulary / missing / padding row everywhere, so every kind has a path
for unseen values: an unknown id gets the learned OOV vector, an empty tag list or history a
zero vector, a missing numeric value its train mean (filled in preprocessing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twotower.model.text import TextEncoder


class EmbeddingEncoder(nn.Module):
    """``id`` and ``categorical`` features: (B,) int64 -> (B, dim)."""

    def __init__(self, cardinality: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(cardinality, dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)


class MultiHotEncoder(nn.Module):
    """``multi_hot`` tags (B, max_len) int64, 0-padded -> mean of the tags' embeddings (B, dim)."""

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


class NumericEncoder(nn.Module):
    """``numeric`` (B,) standardised floats -> (B, 1)."""

    out_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1)


class DenseEncoder(nn.Module):
    """``dense`` precomputed vectors (B, d), e.g. sentence embeddings, projected to (B, dim)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class HistoryEncoder(nn.Module):
    """``history``: the user's past items (B, L) item-id indices, 0-padded -> pooled (B, dim).

    The item embedding is the candidate tower's item-id table when the two towers share it (set
    by ``TwoTower``), so a history is read in the same space the items are encoded in.

    Args:
        pooling: ``mean`` (EmbeddingBag) or ``attention`` (additive attention over the items).
        dropout: share of history items dropped at random in training, so the tower learns
            from partial histories (as at serving time, and against memorising the target's neighbours).
    """

    def __init__(self, cardinality: int, dim: int, pooling: str = "mean", dropout: float = 0.0):
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"history pooling '{pooling}' is not one of mean, attention")
        self.embedding = nn.Embedding(cardinality, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.pooling, self.dropout, self.out_dim = pooling, dropout, dim
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            history = history.masked_fill(torch.rand(history.shape, device=history.device) < self.dropout, 0)
        if self.pooling == "mean":
            return mean_of_rows(history, self.embedding.weight, self.embedding.sparse, packed=self.training and not history.is_cuda)
        vectors = self.embedding(history)  # (B, L, dim)
        scores = self.attention(vectors).squeeze(-1).masked_fill(history == 0, float("-inf"))  # (B, L)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an empty history has all -inf: weights 0
        return torch.einsum("bl,bld->bd", weights, vectors)


def mean_of_rows(indices: torch.Tensor, weight: torch.Tensor, sparse: bool = False, packed: bool = True) -> torch.Tensor:
    """(B, L) row indices of ``weight``, 0 = padding anywhere in a row -> (B, dim) mean of each row's rows (0 if none).

    ``packed`` drops the padding before the bag: on CPU the padded backward sorts every slot,
    padding included, and real histories fill a fraction of ``max_len`` (1024 x 256 slots with
    5-200 real ones: forward + backward 1.7x faster packed, one thread). On a GPU the padded form
    keeps shapes fixed: packing would wait on the host for the number of real items. The
    encoder packs only in training, where the backward is: a query tower traced for serving
    (``torch.jit.trace``) must not bake one batch's offsets into its graph.
    """
    if not packed:
        return F.embedding_bag(indices, weight, mode="mean", padding_idx=0, sparse=sparse)
    real = indices != 0
    offsets = torch.zeros(len(indices), dtype=torch.long, device=indices.device)
    offsets[1:] = real.sum(1).cumsum(0)[:-1]
    return F.embedding_bag(indices[real], weight, offsets, mode="mean", sparse=sparse)


def build_encoder(kind: str, cardinality: int = 0, dim: int = 32, in_dim: int = 1, **options) -> nn.Module:
    """The encoder for one feature kind, from plain values (so a tower can be rebuilt from JSON)."""
    if kind in ("id", "categorical"):
        return EmbeddingEncoder(cardinality, dim)
    if kind == "multi_hot":
        return MultiHotEncoder(cardinality, dim)
    if kind == "numeric":
        return NumericEncoder()
    if kind == "dense":
        return DenseEncoder(in_dim, dim)
    if kind == "text":
        return TextEncoder(cardinality, dim, **options)
    if kind == "history":
        return HistoryEncoder(cardinality, dim, **options)
    raise ValueError(f"no encoder for feature kind '{kind}'")
