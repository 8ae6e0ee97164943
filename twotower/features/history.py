"""``history``: the user's past items, built from the interactions (no table column), read through the item side.

Every source keeps a history as (n_users, max_len) catalogue rows + 1, most recent first, 0 = empty
slot; ``history_inputs`` turns a batch of those rows into what the query tower reads: item
id-vocabulary indices for ``HistoryEncoder`` (which shares the item tower's id table), and with
``through_item_tower`` the distinct items' candidate-tower features for ``ClickHistoryTower``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind

DEFAULT_MAX_LEN = 50


def history_length(spec: FeatureSpec) -> int:
    """The items a history keeps (sources building histories need it before anything is fitted)."""
    return spec.max_len or DEFAULT_MAX_LEN


def history_inputs(name: str, rows: torch.Tensor, through_item_tower: bool, item_vocab_index: torch.Tensor,
                   gather_items: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None) -> dict[str, torch.Tensor]:
    """(B, L) catalogue rows + 1 (0 = empty slot) -> the history feature's tower inputs.

    Args:
        item_vocab_index: (n_items,) the item id-vocabulary index of each catalogue row.
        gather_items: catalogue rows (U,) -> their candidate-tower inputs; needed with ``through_item_tower``.

    Returns:
        ``{name: (B, L) item id-vocabulary indices (0 = padding / not in the vocabulary)}`` and, when
        ``through_item_tower``, also ``{name}.index`` (B, L) into the U distinct items, ``{name}.present``
        (B, L) bool and ``{name}.<item feature>`` (U, ...) the candidate-tower inputs of the distinct items
        (``gather_items(distinct rows)``): popular items sit in many histories, and each is encoded once.
    """
    present = rows > 0
    padded = torch.cat([item_vocab_index.new_zeros(1), item_vocab_index])  # row + 1 -> vocabulary index, 0 -> 0
    out = {name: padded[rows]}
    if through_item_tower:
        distinct, index = torch.unique(rows, return_inverse=True)  # (U,), (B, L)
        out[f"{name}.index"], out[f"{name}.present"] = index, present
        for feature, values in gather_items((distinct - 1).clamp(min=0)).items():
            out[f"{name}.{feature}"] = values  # (U, ...)
    return out


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


class HistoryKind(FeatureKind):
    name = "history"
    fields = ("max_len", "through_item_tower")
    from_interactions = True
    query_only = True
    shares_item_ids = True

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        return FittedFeature(spec, max_len=history_length(spec))  # the items come from the interactions: nothing to learn

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        raise ValueError(f"feature '{fitted.spec.name}' of kind history is not read from a table column: it is built from the interactions")

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        # Rows of the item-id vocabulary (what history_inputs indexes), whether or not the table is shared.
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "cardinality": len(preprocessor.item_ids), "options": dict(options)}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return HistoryEncoder(spec["cardinality"], spec["dim"], **spec.get("options", {}))

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, fitted.max_len, dtype=torch.long)  # no past item: the zero vector

    def forget(self, features: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> None:
        super().forget(features, name, rows)
        present = f"{name}.present"  # read through the item tower: no slot of these rows holds an item
        if present in features:
            features[present] = features[present] & ~rows.unsqueeze(1)

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "int64", (None, fitted.max_len),
                            "int64 item id-vocabulary indices of the latest items, most recent first, 0 = empty slot or unknown item")


register_kind(HistoryKind())
