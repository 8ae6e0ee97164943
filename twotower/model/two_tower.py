"""The two towers together, and building them from fitted features and hyper-parameters."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from torch import nn

from twotower.constraints import AT_LEAST_1, FRACTION
from twotower.features import Preprocessor, kind_of
from twotower.features.base import Features
from twotower.model.history_tower import ClickHistoryTower
from twotower.model.saving import build_tower
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
        ids = [f["name"] for f in self.candidate_tower.config["features"] if kind_of(f["kind"]).identity]
        for f in self.query_tower.config["features"]:
            if kind_of(f["kind"]).shares_item_ids and ids:
                item_table = self.candidate_tower.encoders[ids[0]].embedding
                reader = self.query_tower.encoders[f["name"]]
                if reader.embedding.weight.shape != item_table.weight.shape:
                    raise ValueError(f"{f['kind']} '{f['name']}' embedding {tuple(reader.embedding.weight.shape)} cannot share the item-id table "
                                     f"{tuple(item_table.weight.shape)}")
                reader.embedding = item_table

    def encode_query(self, features: Features) -> torch.Tensor:
        return self.query_tower(features)

    def encode_candidate(self, features: Features) -> torch.Tensor:
        return self.candidate_tower(features)

    @property
    def config(self) -> dict[str, Any]:
        return {"query": self.query_tower.config, "candidate": self.candidate_tower.config, "share_item_embedding": self.share_item_embedding}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TwoTower:
        candidate = build_tower(config["candidate"])
        return cls(build_tower(config["query"], items=candidate), candidate, config["share_item_embedding"])


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
        click_history: options of the ``ClickHistoryTower`` (``pooling``, ``attention_dim``, ``hidden_dims``)
            that is the query tower when the history feature says ``through_item_tower: true``: the
            history is read by the candidate tower itself; the other query features join after pooling.
    """
    dims = dict(feature_dims or {})
    names = sorted({*preprocessor.query, *preprocessor.candidate})
    for name in dims:
        if name not in names:  # a typo would otherwise leave the feature at embedding_dim, silently
            raise ValueError(f"model.feature_dims names '{name}', which is no feature (features: {', '.join(names)})")
    options = {"text": text, "history": history}  # the model's encoder options, by kind
    item_ids = next((name for name, fitted in preprocessor.candidate.items() if fitted.kind.identity), None)

    def specs(side: str) -> list[dict[str, Any]]:
        out = []
        for name, fitted in preprocessor.side(side).items():
            kind = fitted.kind
            # A feature reading the item-id table is as wide as that table.
            shared = share_item_embedding and kind.shares_item_ids and item_ids is not None
            if shared and name in dims and name != item_ids:  # the shared table's width is the item id's: this one would be ignored
                raise ValueError(f"model.feature_dims.{name}={dims[name]}: '{name}' reads the item-id table of '{item_ids}' (model.share_item_embedding), "
                                 f"as wide as it: set model.feature_dims.{item_ids}, or model.share_item_embedding=false")
            dim = dims.get(item_ids if shared else name, embedding_dim)
            out.append(kind.encoder_spec(fitted, preprocessor, dim, dict(options.get(kind.name) or {})))
        return out

    candidate = Tower(specs("candidate"), candidate_hidden_dims if candidate_hidden_dims is not None else hidden_dims, output_dim, dropout)
    query_specs = specs("query")
    through = [name for name, fitted in preprocessor.query.items() if fitted.spec.through_item_tower]
    if len(through) > 1:
        raise ValueError(f"a click-history user tower reads one history through the item tower (found {through})")
    if through:
        if query_hidden_dims is not None:  # the click-history tower's widths are its own: it would be ignored
            raise ValueError(f"model.query_hidden_dims={list(query_hidden_dims)} sets a profile tower's MLP, but the user tower reads "
                             f"'{through[0]}' through the item tower: set model.click_history.hidden_dims")
        others = [f for f in query_specs if f["name"] not in through]
        query = ClickHistoryTower(candidate, through[0], others, **{"dropout": dropout, **(click_history or {})})
        return TwoTower(query, candidate, share_item_embedding)
    if click_history is not None:
        raise ValueError("model.click_history configures a click-history user tower, but no history feature is read through the item "
                         "tower: set through_item_tower: true on the query side's history feature")
    query = Tower(query_specs, query_hidden_dims if query_hidden_dims is not None else hidden_dims, output_dim, dropout)
    return TwoTower(query, candidate, share_item_embedding)
