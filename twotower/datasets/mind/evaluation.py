"""Impression metrics of any scorer on a MIND data module: the trained towers, or a popularity ranker.

Used to read a model against the baseline MIND papers start from, on all impressions and on the
fresh news only (items never shown in training, which only their content can rank).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from twotower.data import TwoTowerDataModule
from twotower.model.two_tower import TwoTower
from twotower.task.impression_metrics import impression_metrics
from twotower.task.retrieval import encode_catalogue

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (users, items, impressions) -> scores


def popularity_scorer(datamodule: TwoTowerDataModule) -> Scorer:
    """Scores every shown item by its number of training clicks, whoever the user."""
    counts = datamodule.prepared.item_counts.double()
    return lambda users, items, impressions: counts[items]


@torch.no_grad()
def model_scorer(model: TwoTower, datamodule: TwoTowerDataModule, split: str, batch_size: int = 1024) -> Scorer:
    """Scores by the towers: the dot product of the item's vector and the query vector of the impression
    (its own history line, where the source records one per impression; else the user's)."""
    model.eval()
    catalogue = encode_catalogue(model.encode_candidate, datamodule.catalogue())  # (n_items, D)
    recorded = datamodule.prepared.impressions
    lines = torch.unique(recorded.entries[split][1])  # (I,) sorted
    own_history = recorded.histories is not None
    queries = torch.cat([model.encode_query(datamodule.query_features(recorded.user_of[chunk], split, impressions=chunk if own_history else None))
                         for chunk in lines.split(batch_size)])  # (I, D)
    return lambda users, items, impressions: (queries[torch.searchsorted(lines, impressions)] * catalogue[items]).sum(-1)


def evaluate_impressions(datamodule: TwoTowerDataModule, split: str, scorer: Scorer, fresh_only: bool = False) -> dict[str, float]:
    """Mean impression AUC/MRR/nDCG of ``scorer`` over the ``split`` impressions.

    Args:
        fresh_only: keep only the shown items that were never in the training directory's
            news.tsv; impressions left without both a click and a skip drop out.
    Returns:
        the four metrics and ``impressions`` (how many were scored).
    """
    item, impression, label = datamodule.prepared.impressions.entries[split]
    user = datamodule.prepared.impressions.users[split]
    if fresh_only:
        keep = ~datamodule.prepared.impressions.item_seen_in_train[item]
        item, impression, label, user = item[keep], impression[keep], label[keep], user[keep]
    values = impression_metrics(scorer(user, item, impression), label, impression)
    out = {name: float(v.mean()) for name, v in values.items()}
    out["impressions"] = len(values["impression_auc"])
    return out
