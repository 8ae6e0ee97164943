"""A user tower that is the user's click history read by the item tower itself (NRMS/LSTUR style).

Each clicked item goes through the candidate tower (the same module, so the same weights), and
the item vectors are pooled by mean or additive attention. Other query features (e.g. a user-id
embedding, as in LSTUR) are concatenated to the pooled vector before a small MLP. A user with no
history gets a learned "no history" vector in place of the pooled one, so every user has a vector.

Inputs, for a history feature named ``h`` with ``through_item_tower: true`` (written by
``twotower.features.history.history_inputs``, in training and at serving alike):
    ``h.<item feature>`` (U, ...): the candidate tower's features of the U distinct items in the
        batch's histories (each encoded once, however many users clicked it);
    ``h.index`` (B, L) int64: the row of ``h.<item feature>`` in each history slot;
    ``h.present`` (B, L) bool: which history slots hold an item.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twotower.features.base import Features
from twotower.model.saving import SavedTower, tower_type
from twotower.model.towers import Tower, build_encoders, build_mlp

POOLINGS = ("mean", "attention")


@tower_type("click_history")
class ClickHistoryTower(SavedTower):
    """Query tower: pooled item-tower vectors of the clicked items (+ other user features) -> unit vector.

    Args:
        items: the candidate tower, shared (not copied).
        history: name of the history feature.
        features: the other query features, as ``Tower`` takes them (may be empty).
        pooling: ``mean`` or ``attention`` (additive attention, as in NRMS's user encoder).
        attention_dim: width of the additive attention's hidden layer.
        hidden_dims: hidden layers of the MLP after pooling.
        output_dim: size of the output vector (the item tower's).
        dropout: dropout after each hidden layer.
        normalize: L2-normalise the output.
    """

    def __init__(
        self,
        items: Tower,
        history: str = "history",
        features: Sequence[dict[str, Any]] = (),
        pooling: str = "attention",
        attention_dim: int = 64,
        hidden_dims: Sequence[int] = (),
        output_dim: int | None = None,
        dropout: float = 0.0,
        normalize: bool = True,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"click-history pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
        output_dim = output_dim or items.output_dim
        if output_dim != items.output_dim:
            raise ValueError(f"click-history tower output_dim {output_dim} differs from the item tower's {items.output_dim}")
        self.config = {
            "type": self.type_name, "history": history, "features": [dict(f) for f in features], "pooling": pooling,
            "attention_dim": attention_dim, "hidden_dims": list(hidden_dims), "output_dim": output_dim, "dropout": dropout, "normalize": normalize,
        }
        self.items, self.history, self.pooling = items, history, pooling
        item_dim = items.output_dim
        self.empty = nn.Parameter(torch.zeros(item_dim))
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(item_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1, bias=False))
        self.encoders = build_encoders(features)
        self.mlp = build_mlp(item_dim + sum(e.out_dim for e in self.encoders.values()), hidden_dims, output_dim, dropout)
        self.normalize, self.output_dim = normalize, output_dim

    @classmethod
    def from_config(cls, config: Mapping[str, Any], items: nn.Module | None = None) -> ClickHistoryTower:
        if items is None:
            raise ValueError("a click-history tower reads through the item tower: build it with items=<the candidate tower>")
        return cls(items, **{k: v for k, v in config.items() if k != "type"})

    @classmethod
    def features_read(cls, config: Mapping[str, Any]) -> list[str]:
        """The other query features, and the history (read through the item tower, so no encoder of its own here)."""
        return [*super().features_read(config), config.get("history")]

    def weights(self) -> dict[str, torch.Tensor]:
        """Without the item tower's tensors: they are the candidate tower's, saved (and loaded) with it."""
        return {name: t for name, t in self.state_dict().items() if not name.startswith("items.")}

    def item_inputs(self, features: Features) -> Features:
        """The candidate-tower inputs of the distinct history items, (U, ...) each."""
        names = {name: f"{self.history}.{name}" for name in self.items.encoders}
        missing = [key for key in [*names.values(), f"{self.history}.index", f"{self.history}.present"] if key not in features]
        if missing:
            raise KeyError(f"click-history tower inputs lack {missing} (given: {sorted(features)}); the data module must write the history items' features")
        return {name: features[key] for name, key in names.items()}

    def pool(self, vectors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item vectors, (B, L) presence -> (B, D); an empty history gives the learned ``empty`` vector."""
        if self.pooling == "mean":
            weights = present.float() / present.sum(1, keepdim=True).clamp(min=1)
        else:
            scores = self.attention(vectors).squeeze(-1).masked_fill(~present, float("-inf"))  # (B, L)
            weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        pooled = torch.einsum("bl,bld->bd", weights, vectors)
        return torch.where(present.any(1, keepdim=True), pooled, self.empty.expand_as(pooled))

    def forward(self, features: Features) -> torch.Tensor:
        inputs = self.item_inputs(features)
        present = features[f"{self.history}.present"]  # (B, L)
        vectors = self.items(inputs)[features[f"{self.history}.index"]]  # (U, D) -> (B, L, D)
        parts = [self.pool(vectors, present)] + [encoder(features[name]) for name, encoder in self.encoders.items()]
        x = self.mlp(torch.cat(parts, dim=-1))
        return F.normalize(x, dim=-1) if self.normalize else x
