"""Metrics beyond accuracy: coverage, diversity, volume, novelty, exposure, freshness, and recall by user activity.

Every metric reads the same ranked lists as ``RetrievalMetrics`` and is logged next to it as
``split/name@k``. Item similarity is model-independent (a fixed embedding of the items built
from the training interactions), so two recommenders are compared on the same yardstick.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from twotower.task.freshness import FRESH_DAYS, fresh_share, item_age_days, list_age
from twotower.task.metrics import metrics_at_k, retrieval_hits

ACTIVITY_GROUPS = ("light", "medium", "heavy")
# Items outside the most popular 20% of the catalogue are the long tail (Abdollahpouri et al.).
HEAD_SHARE = 0.2
# Added to the diagonal of a similarity matrix so its log-determinant stays finite.
VOLUME_EPS = 1e-3


def gini(exposure: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative counts (0 = equal exposure, -> 1 = all on one item)."""
    x = torch.sort(exposure.double()).values  # ascending
    n = x.numel()
    if n == 0 or x.sum() == 0:
        return torch.tensor(0.0, dtype=torch.float64)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return ((2 * ranks - n - 1) * x).sum() / (n * x.sum())


def intra_list_diversity(vectors: torch.Tensor) -> torch.Tensor:
    """1 - mean pairwise cosine similarity within each list: (U, K, d) unit vectors -> (U,)."""
    k = vectors.shape[1]
    if k < 2:
        return torch.zeros(vectors.shape[0], device=vectors.device)
    similarity = vectors @ vectors.transpose(1, 2)  # (U, K, K)
    off_diagonal = similarity.sum((1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(1)
    return 1.0 - off_diagonal / (k * (k - 1))


def log_volume(vectors: torch.Tensor, eps: float = VOLUME_EPS) -> torch.Tensor:
    """log det(V V^T + eps I) of each list's similarity matrix: (U, K, d) -> (U,).

    The squared volume spanned by the items: near-duplicates add almost nothing, items in new
    directions add much (the determinantal point process view of diversity).
    """
    gram = vectors @ vectors.transpose(1, 2)  # (U, K, K)
    eye = torch.eye(gram.shape[1], device=gram.device, dtype=gram.dtype)
    return torch.logdet(gram.double() + eps * eye.double()).float()


def item_vectors_from_interactions(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """(num_items, <=dim) unit vectors of items: a truncated SVD of the user x item matrix.

    Items nobody interacted with get a zero vector (similarity 0 to everything).
    """
    # Sparse: a dense users x items matrix is 40 GB at 100k x 100k; svd_lowrank only multiplies by it.
    pairs = torch.sparse_coo_tensor(torch.stack([users, items]), torch.ones(len(users)), (num_users, num_items), check_invariants=True).coalesce()
    matrix = torch.sparse_coo_tensor(pairs.indices(), pairs.values().clamp(max=1.0), pairs.shape, is_coalesced=True, check_invariants=True)  # 0/1 even for repeated pairs
    q = min(dim, num_users, num_items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(matrix, q=q, niter=4)
    return F.normalize(v * s, dim=1)  # (num_items, q)


class BeyondAccuracyMetrics(Metric):
    """Coverage, diversity, volume, novelty, Gini, long-tail share and recall by activity at each k.

    Args:
        item_vectors: (n_items, d) unit vectors defining item similarity (diversity, volume).
        item_popularity: (n_items,) training interaction counts (novelty, long tail).
        user_activity: (n_users,) known interactions per user; users are split into light /
            medium / heavy at the terciles of the activity of the users that are evaluated.
        num_users: users who could interact (the denominator of the novelty probabilities).
        ks: cut-offs.
        item_age_days: (n_items,) each item's age at the evaluation time, in days
            (``twotower.task.freshness``); None (data without times): no freshness metrics at all.
        fresh_days: items younger than this count as fresh.

    ``compute()`` returns ``{"coverage@20": ..., "diversity@20": ..., "recall_heavy@20": ...}``:
    coverage = distinct recommended items / candidate items; diversity = mean intra-list
    diversity; volume = mean log-det volume; novelty = mean -log2 of the recommended items'
    smoothed popularity (count + 1) / (num_users + 1); gini = Gini of exposure over the candidate
    items; longtail = share of recommendations outside the most popular 20% of items; with item ages,
    age = mean age in days of the recommended items and fresh = share of them younger than ``fresh_days``.
    """

    full_state_update = False

    def __init__(self, item_vectors: torch.Tensor, item_popularity: torch.Tensor, user_activity: torch.Tensor, num_users: int, ks: Sequence[int] = (10, 20), activity_cuts: Sequence[float] | None = None,
                 item_age_days: torch.Tensor | None = None, fresh_days: float = FRESH_DAYS, **kwargs):
        super().__init__(**kwargs)
        if item_vectors.shape[0] != item_popularity.shape[0]:
            raise ValueError(f"item_vectors has {item_vectors.shape[0]} rows, item_popularity {item_popularity.shape[0]}")
        if item_age_days is not None and item_age_days.shape[0] != item_popularity.shape[0]:
            raise ValueError(f"item_age_days has {item_age_days.shape[0]} rows, item_popularity {item_popularity.shape[0]}")
        self.ks = sorted(set(int(k) for k in ks))
        n_items = item_popularity.shape[0]
        # Absent, not zero, without times: a 0-day age would read as "everything is brand new".
        self.freshness = ("age", "fresh") if item_age_days is not None else ()
        self.fresh_days = float(fresh_days)
        if item_age_days is not None:
            self.register_buffer("item_age_days", item_age_days.float())
        self.register_buffer("item_vectors", item_vectors.float())
        self.register_buffer("self_information", -torch.log2((item_popularity.double() + 1) / (num_users + 1)).float())
        n_head = int(round(HEAD_SHARE * n_items))
        head = torch.zeros(n_items, dtype=torch.bool)
        head[torch.argsort(item_popularity, descending=True, stable=True)[:n_head]] = True
        self.register_buffer("long_tail", ~head)
        self.register_buffer("user_activity", user_activity.long())
        self.activity_cuts = list(activity_cuts) if activity_cuts is not None else None
        self.add_state("candidates", default=torch.zeros(n_items), dist_reduce_fx="max")
        self.add_state("users", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for k in self.ks:
            self.add_state(f"exposure_{k}", default=torch.zeros(n_items, dtype=torch.float64), dist_reduce_fx="sum")
            for name in ("diversity", "volume", "novelty", "longtail", *self.freshness):
                self.add_state(f"{name}_{k}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            for group in ACTIVITY_GROUPS:
                self.add_state(f"recall_{group}_{k}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for group in ACTIVITY_GROUPS:
            self.add_state(f"users_{group}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def set_activity_cuts(self, users: torch.Tensor) -> None:
        """Tercile cut points of the activity of the users that will be evaluated (call before ``update``)."""
        activity = self.user_activity[users.to(self.user_activity.device)].double()
        self.activity_cuts = torch.quantile(activity, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64, device=activity.device)).tolist()

    def update(self, top_items: torch.Tensor, targets: torch.Tensor, users: torch.Tensor, num_items: int, candidates: torch.Tensor | None = None) -> None:
        """Args: top_items (U, K) ranked item rows; targets (2, nnz); users (U,) user rows; candidates (n_items,) bool or None = all."""
        if self.activity_cuts is None:
            raise ValueError("call set_activity_cuts(eval_users) before update, so activity groups are fixed")
        if candidates is None:
            self.candidates.fill_(1.0)  # every item; one pass, no (n_items,) temporary
        else:
            self.candidates = torch.maximum(self.candidates, candidates.float())
        hits, n_relevant = retrieval_hits(top_items, targets, top_items.shape[0], num_items)
        keep = n_relevant > 0
        top_items, hits, n_relevant, users = top_items[keep], hits[keep], n_relevant[keep], users[keep]
        activity = self.user_activity[users]
        # light: activity <= first cut, medium: <= second cut, heavy: above (users with no history are light).
        group_of = torch.bucketize(activity.double(), torch.tensor(self.activity_cuts, dtype=torch.float64, device=activity.device))  # 0, 1, 2
        self.users += len(users)
        for g, group in enumerate(ACTIVITY_GROUPS):
            state = getattr(self, f"users_{group}")
            state += (group_of == g).sum()
        # One gather per item table for the largest k, sliced for the others: random rows of a 1M-item
        # table are cache misses, the most expensive part of this update.
        deepest = top_items[:, :max(self.ks)]
        all_vectors, all_information, all_tail = self.item_vectors[deepest], self.self_information[deepest], self.long_tail[deepest]  # (U, K, d), (U, K), (U, K)
        all_ages = self.item_age_days[deepest] if self.freshness else None  # (U, K)
        for k in self.ks:
            top = top_items[:, :k]  # (U, k)
            vectors = all_vectors[:, :k]  # (U, k, d)
            exposure = getattr(self, f"exposure_{k}")
            exposure.index_add_(0, top.reshape(-1), torch.ones(top.numel(), dtype=torch.float64, device=top.device))
            for name, values in (
                ("diversity", intra_list_diversity(vectors)),
                ("volume", log_volume(vectors)),
                ("novelty", all_information[:, :k].mean(1)),
                ("longtail", all_tail[:, :k].float().mean(1)),
            ):
                state = getattr(self, f"{name}_{k}")
                state += values.double().sum()
            if self.freshness:
                ages = all_ages[:, :k]  # (U, k) days
                for name, values in (("age", list_age(ages)), ("fresh", fresh_share(ages, self.fresh_days))):
                    state = getattr(self, f"{name}_{k}")
                    state += values.sum()
            recall = metrics_at_k(hits, n_relevant, k)["recall"]
            for g, group in enumerate(ACTIVITY_GROUPS):
                state = getattr(self, f"recall_{group}_{k}")
                state += recall[group_of == g].double().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        users = self.users.clamp(min=1)
        candidates = self.candidates > 0
        out: dict[str, torch.Tensor] = {}
        for k in self.ks:
            exposure = getattr(self, f"exposure_{k}")[candidates]
            out[f"coverage@{k}"] = ((exposure > 0).double().sum() / candidates.sum().clamp(min=1)).float()
            out[f"gini@{k}"] = gini(exposure.cpu()).float()
            for name in ("diversity", "volume", "novelty", "longtail", *self.freshness):
                out[f"{name}@{k}"] = (getattr(self, f"{name}_{k}") / users).float()
            for group in ACTIVITY_GROUPS:
                out[f"recall_{group}@{k}"] = (getattr(self, f"recall_{group}_{k}") / getattr(self, f"users_{group}").clamp(min=1)).float()
        return out


def beyond_accuracy_for_split(datamodule, split: str, ks: Sequence[int], fresh_days: float = FRESH_DAYS) -> BeyondAccuracyMetrics:
    """The metrics for one split of a set-up ``TwoTowerDataModule``: popularity, activity, item
    similarity and item ages all come from the split's known interactions (train for val, train + val
    for test); ages at the latest of them. Without times (``prepared.first_seen`` None) no freshness metrics."""
    known = datamodule.prepared.known[split]
    first_seen = datamodule.prepared.first_seen  # None: a source without times
    num_users, num_items = len(datamodule.prepared.user_rows), len(datamodule.prepared.item_rows)
    all_users = torch.arange(num_users, device=known.indptr.device)
    rows = torch.repeat_interleave(all_users, known.row_lengths(all_users))
    metrics = BeyondAccuracyMetrics(
        item_vectors=item_vectors_from_interactions(rows.cpu(), known.indices.cpu(), num_users, num_items, seed=datamodule.seed),
        item_popularity=torch.bincount(known.indices.cpu(), minlength=num_items),
        user_activity=known.row_lengths(all_users).cpu(),
        num_users=num_users,
        ks=ks,
        item_age_days=None if first_seen is None else item_age_days(first_seen[split].ages()),
        fresh_days=fresh_days,
    )
    metrics.set_activity_cuts(datamodule.prepared.eval_users[split])
    return metrics
