"""Top-K retrieval metrics over the full catalogue, as a torchmetrics Metric that syncs across processes."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

METRICS = ("recall", "precision", "ndcg", "map", "mrr", "hitrate")


def retrieval_hits(top_items: torch.Tensor, targets: torch.Tensor, num_users: int, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which ranked items are relevant, without a dense (users x items) matrix.

    Args:
        top_items: (U, K) item indices, best first.
        targets: (2, nnz) relevant (user position, item) pairs.
    Returns:
        hits (U, K) bool and the number of relevant items per user (U,).
    """
    keys = torch.sort(targets[0] * num_items + targets[1]).values  # (nnz,)
    asked = torch.arange(num_users, device=top_items.device).unsqueeze(1) * num_items + top_items  # (U, K)
    found = torch.searchsorted(keys, asked).clamp(max=max(len(keys) - 1, 0))
    hits = keys[found] == asked if len(keys) else torch.zeros_like(asked, dtype=torch.bool)
    return hits, torch.bincount(targets[0], minlength=num_users)


def metrics_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-user metrics at cut-off k (U,), from ranked hits (U, >=k) and relevant counts (U,).

    recall = hits / relevant; precision = hits / k; ndcg with binary gains, ideal DCG over
    min(relevant, k); map = average precision at k, normalised by min(relevant, k); mrr = 1/rank
    of the first hit within k; hitrate = any hit within k.
    """
    h = hits[:, :k].float()  # (U, k)
    positions = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=torch.float32)
    discounts = 1.0 / torch.log2(positions + 1)
    n_rel = n_relevant.float()
    ideal_len = n_rel.clamp(max=k).long()
    ideal = torch.cat([torch.zeros(1, device=h.device), discounts.cumsum(0)])[ideal_len]
    n_hits = h.sum(1)
    first = torch.where(h.any(1), h.argmax(1).float() + 1, torch.full_like(n_hits, float("inf")))
    precision_at = h.cumsum(1) / positions
    return {
        "recall": n_hits / n_rel,
        "precision": n_hits / k,
        "ndcg": (h * discounts).sum(1) / ideal,
        "map": (precision_at * h).sum(1) / n_rel.clamp(max=k),
        "mrr": 1.0 / first,
        "hitrate": (n_hits > 0).float(),
    }


class RetrievalMetrics(Metric):
    """Means over users of Recall, Precision, NDCG, MAP, MRR and HitRate at each k.

    ``update(top_items, targets)`` takes each user's ranked items and their relevant (position,
    item) pairs; users without relevant items are skipped. ``compute()`` returns ``{"recall@20": ...}``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (10, 20, 50, 100), **kwargs):
        super().__init__(**kwargs)
        if not ks or min(ks) < 1:
            raise ValueError(f"metric cut-offs ks={list(ks)} must be positive")
        self.ks = sorted(set(int(k) for k in ks))
        for k in self.ks:
            for name in METRICS:
                self.add_state(f"{name}_{k}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("users", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, top_items: torch.Tensor, targets: torch.Tensor, num_items: int) -> None:
        hits, n_relevant = retrieval_hits(top_items, targets, top_items.shape[0], num_items)
        keep = n_relevant > 0
        hits, n_relevant = hits[keep], n_relevant[keep]
        for k in self.ks:
            for name, values in metrics_at_k(hits, n_relevant, k).items():
                state = getattr(self, f"{name}_{k}")
                state += values.double().sum()
        self.users += keep.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        users = self.users.clamp(min=1).double()
        return {f"{name}@{k}": (getattr(self, f"{name}_{k}") / users).float() for k in self.ks for name in METRICS}
