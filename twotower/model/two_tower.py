"""The two towers together, and building them from fitted features and hyper-parameters."""
from __future__ import annotations

from typing import Annotated, Any, Mapping, Sequence

import torch
from torch import nn

from twotower.constraints import AT_LEAST_1, FRACTION
from twotower.data.preprocess import Preprocessor
from twotower.data.store import Features
from twotower.model.history_tower import ClickHistoryTower
from twotower.model.towers import Tower


class TwoTower(nn.Module):
    """A query (user) tower and a candidate (item) tower producing unit vectors in one space.

    With ``share_item_embedding``, the query tower's history encoder reads the candidate tower's
    item-id embedding table (one table, trained by both towers). The query tower may be a
    ``ClickHistoryTower`` that reads the history through the candidate tower itself.
    """

    def __init__(self, query: Tower | ClickHistoryTower, candidate: Tower, share_item_embedding: bool = True):
        super().__init__()
        if query.output_dim != candidate.output_dim:
            raise ValueError(f"query tower outputs dim {query.output_dim}, candidate tower {candidate.output_dim}")
        self.query_tower, self.candidate_tower = query, candidate
        self.share_item_embedding = share_item_embedding
        if share_item_embedding:
            self._tie_history_to_item_ids()

    def _tie_history_to_item_ids(self) -> None:
        ids = [f["name"] for f in self.candidate_tower.config["features"] if f["kind"] == "id"]
        for f in self.query_tower.config["features"]:
            if f["kind"] == "history" and ids:
                item_table = self.candidate_tower.encoders[ids[0]].embedding
                history = self.query_tower.encoders[f["name"]]
                if history.embedding.weight.shape != item_table.weight.shape:
                    raise ValueError(f"history '{f['name']}' embedding {tuple(history.embedding.weight.shape)} cannot share the item-id table {tuple(item_table.weight.shape)}")
                history.embedding = item_table

    def encode_query(self, features: Features) -> torch.Tensor:
        return self.query_tower(features)

    def encode_candidate(self, features: Features) -> torch.Tensor:
        return self.candidate_tower(features)

    @property
    def config(self) -> dict[str, Any]:
        return {"query": self.query_tower.config, "candidate": self.candidate_tower.config, "share_item_embedding": self.share_item_embedding}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TwoTower":
        candidate = Tower(**config["candidate"])
        if config["query"].get("type") == "click_history":
            query = ClickHistoryTower(candidate, **{k: v for k, v in config["query"].items() if k != "type"})
        else:
            query = Tower(**config["query"])
        return cls(query, candidate, config["share_item_embedding"])


def build_two_tower(
    preprocessor: Preprocessor,
    embedding_dim: Annotated[int, AT_LEAST_1] = 64,
    hidden_dims: Sequence[Annotated[int, AT_LEAST_1]] = (256,),
    output_dim: Annotated[int, AT_LEAST_1] = 64,
    dropout: Annotated[float, FRACTION] = 0.0,
    feature_dims: Mapping[str, int] | None = None,
    text: Mapping[str, Any] | None = None,
    history: Mapping[str, Any] | None = None,
    share_item_embedding: bool = True,
    query_hidden_dims: Sequence[Annotated[int, AT_LEAST_1]] | None = None,
    candidate_hidden_dims: Sequence[Annotated[int, AT_LEAST_1]] | None = None,
    click_history: Mapping[str, Any] | None = None,
) -> TwoTower:
    """Towers sized from the fitted vocabularies.

    Args:
        embedding_dim: embedding size of every embedded feature, unless ``feature_dims`` names it.
        text: options of every text encoder (``pooling``, ``transformer_layers``, ``heads``).
        history: options of the history encoder (``pooling``, ``dropout``).
        query_hidden_dims / candidate_hidden_dims: per-tower MLP widths (default ``hidden_dims``).
        click_history: when given, the query tower is a ``ClickHistoryTower`` with these options
            (``pooling``, ``attention_dim``, ``hidden_dims``): the history feature is read by the
            candidate tower itself (the data must write the history items' features, as
            ``MindDataModule`` does); the other query features join after pooling.
    """
    dims = dict(feature_dims or {})

    def specs(side: str) -> list[dict[str, Any]]:
        out = []
        for name, fitted in preprocessor.side(side).items():
            kind = fitted.spec.kind
            spec: dict[str, Any] = {"name": name, "kind": kind, "dim": dims.get(name, embedding_dim)}
            if kind == "history":
                spec["cardinality"] = len(preprocessor.item_ids)
                spec["options"] = dict(history or {})
                if share_item_embedding:
                    item_ids = [n for n, f in preprocessor.candidate.items() if f.spec.kind == "id"]
                    spec["dim"] = dims.get(item_ids[0], embedding_dim) if item_ids else spec["dim"]
            elif kind == "text":
                spec["cardinality"] = fitted.cardinality
                spec["options"] = {**(text or {}), "max_len": fitted.max_len}
            elif kind == "dense":
                spec["in_dim"] = fitted.dim
            else:
                spec["cardinality"] = fitted.cardinality
            out.append(spec)
        return out

    candidate = Tower(specs("candidate"), candidate_hidden_dims if candidate_hidden_dims is not None else hidden_dims, output_dim, dropout)
    if click_history is not None:
        query_specs = specs("query")
        history_names = [f["name"] for f in query_specs if f["kind"] == "history"]
        if len(history_names) != 1:
            raise ValueError(f"a click-history user tower needs exactly one history feature on the query side (found {history_names})")
        others = [f for f in query_specs if f["kind"] != "history"]
        query = ClickHistoryTower(candidate, history_names[0], others, **{"dropout": dropout, **click_history})
        return TwoTower(query, candidate, share_item_embedding)
    query = Tower(specs("query"), query_hidden_dims if query_hidden_dims is not None else hidden_dims, output_dim, dropout)
    return TwoTower(query, candidate, share_item_embedding)
