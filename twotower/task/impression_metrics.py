"""Impression-level metrics: AUC, MRR, nDCG@5 and nDCG@10, per impression, averaged.

The definitions are those of the news-click benchmark's evaluation script (``evaluate.py`` of the
competition of the data set in ``twotower.datasets.mind``): within one impression, AUC is the ROC AUC of the scores against the click labels
(ties count one half), MRR is ``sum(label_i / rank_i) / sum(label_i)``, nDCG@k has gains
``2**label - 1`` and discounts ``log2(rank + 1)`` over the top k, divided by the ideal DCG@k.
Each is averaged over impressions with equal weight. Impressions without both a click and a
skip have no AUC and are left out of every mean (the benchmark's impressions all have both).
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

NAMES = ("impression_auc", "impression_mrr", "impression_ndcg@5", "impression_ndcg@10")


def impression_metrics(scores: torch.Tensor, labels: torch.Tensor, impressions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-impression AUC, MRR, nDCG@5 and nDCG@10 for flat entries, without a Python loop.

    Args:
        scores: (n,) the model's score of each shown item.
        labels: (n,) 1 where the item was clicked, else 0.
        impressions: (n,) which impression each entry belongs to (any integer ids).
    Returns:
        ``{name: (I,) float64}`` for the I impressions that have both a click and a skip.
    """
    scores, labels = scores.double(), labels.double()
    group = torch.unique(impressions, return_inverse=True)[1]  # (n,) 0..I-1
    n_groups = int(group.max()) + 1 if len(group) else 0
    size = torch.bincount(group, minlength=n_groups)
    clicks = torch.bincount(group, weights=labels, minlength=n_groups)
    skips = size - clicks
    start = torch.cumsum(size, 0) - size  # (I,) first position of each impression when sorted by group

    # Best first within each impression: sort by score (descending, stable), then by group (stable).
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(group[by_score], stable=True)]
    rank = torch.arange(len(order), device=scores.device) - start[group[order]] + 1  # (n,) 1-based
    hit = labels[order]
    mrr = torch.bincount(group[order], weights=hit / rank, minlength=n_groups) / clicks

    out = {"impression_mrr": mrr}
    for k in (5, 10):
        discount = torch.where(rank <= k, 1.0 / torch.log2(rank.double() + 1), torch.zeros_like(hit))
        dcg = torch.bincount(group[order], weights=(2**hit - 1) * discount, minlength=n_groups)
        ideal_positions = torch.arange(1, k + 1, device=scores.device, dtype=torch.float64)
        ideal_table = torch.cat([torch.zeros(1, dtype=torch.float64, device=scores.device), (1.0 / torch.log2(ideal_positions + 1)).cumsum(0)])
        out[f"impression_ndcg@{k}"] = dcg / ideal_table[clicks.clamp(max=k).long()]

    # AUC = (sum of the clicks' ascending ranks - c(c+1)/2) / (clicks * skips), tied scores sharing
    # their average rank (the Mann-Whitney form of ROC AUC, as sklearn computes it).
    ascending = order.flip(0)
    ascending = ascending[torch.argsort(group[ascending], stable=True)]
    g, s = group[ascending], scores[ascending]
    new_run = torch.ones(len(g), dtype=torch.bool, device=scores.device)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run = torch.cumsum(new_run, 0) - 1
    run_length = torch.bincount(run)
    run_start = torch.cumsum(run_length, 0) - run_length  # position of each tie run in the sorted order
    average_rank = (run_start[run] - start[g] + (run_length[run] + 1) / 2.0).double()
    click_rank_sum = torch.bincount(g, weights=average_rank * labels[ascending], minlength=n_groups)
    out["impression_auc"] = (click_rank_sum - clicks * (clicks + 1) / 2) / (clicks * skips)

    valid = (clicks > 0) & (skips > 0)
    return {name: out[name][valid] for name in NAMES}


class ImpressionMetrics(Metric):
    """Means over impressions of ``impression_metrics``; syncs across processes.

    ``update(scores, labels, impressions)`` takes flat entries; every impression must be whole
    within one call (its entries are never split across calls or processes).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in NAMES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("impressions", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, impressions: torch.Tensor) -> None:
        values = impression_metrics(scores, labels, impressions)
        for name, per_impression in values.items():
            state = getattr(self, name)
            state += per_impression.sum()
        self.impressions += len(values["impression_auc"])

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.impressions.clamp(min=1).double()
        return {name: (getattr(self, name) / count).float() for name in NAMES}
