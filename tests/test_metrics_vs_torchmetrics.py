"""twotower.task.metrics against torchmetrics' functional retrieval metrics, user by user, on random data."""
import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

from twotower.task.metrics import RetrievalMetrics, metrics_at_k, retrieval_hits
from twotower.task.retrieval import top_k


def _random_case(seed: int, n_users: int = 12, n_items: int = 40):
    generator = torch.Generator().manual_seed(seed)
    # Positive, distinct scores: torchmetrics' average precision ignores items scored <= 0.
    scores = torch.rand(n_users, n_items, generator=generator) + 0.01
    relevant = torch.rand(n_users, n_items, generator=generator) < 0.15
    relevant[:, 0] |= ~relevant.any(1)  # every user has at least one relevant item
    return scores, relevant


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10, 40])
def test_per_user_metrics_equal_torchmetrics(seed, k):
    scores, relevant = _random_case(seed)
    n_users, n_items = scores.shape
    top = top_k(scores.clone(), n_items).indices
    targets = relevant.nonzero().T  # (2, nnz) (user, item)
    hits, n_relevant = retrieval_hits(top, targets, n_users, n_items)
    ours = metrics_at_k(hits, n_relevant, k)
    for u in range(n_users):
        p, t = scores[u], relevant[u]
        assert ours["recall"][u] == pytest.approx(float(retrieval_recall(p, t, top_k=k)), abs=1e-6)
        assert ours["precision"][u] == pytest.approx(float(retrieval_precision(p, t, top_k=k)), abs=1e-6)
        assert ours["ndcg"][u] == pytest.approx(float(retrieval_normalized_dcg(p, t, top_k=k)), abs=1e-6)
        assert ours["mrr"][u] == pytest.approx(float(retrieval_reciprocal_rank(p, t, top_k=k)), abs=1e-6)
        assert ours["hitrate"][u] == pytest.approx(float(retrieval_hit_rate(p, t, top_k=k)), abs=1e-6)
        # torchmetrics divides the summed precisions by the hits within k; we divide by
        # min(relevant, k) (a list that misses relevant items is not perfect): convert.
        n_hits = float(hits[u, :k].sum())
        expected_map = float(retrieval_average_precision(p, t, top_k=k)) * n_hits / min(float(t.sum()), k)
        assert ours["map"][u] == pytest.approx(expected_map, abs=1e-6)


def test_metric_means_equal_torchmetrics_means():
    scores, relevant = _random_case(seed=7, n_users=30, n_items=60)
    n_users, n_items = scores.shape
    metric = RetrievalMetrics(ks=[10, 20])
    top = top_k(scores.clone(), 20).indices
    # Two update calls with positions local to each batch, as the evaluation loop feeds them.
    for rows in (torch.arange(0, 13), torch.arange(13, n_users)):
        targets = relevant[rows].nonzero().T
        metric.update(top[rows], targets, n_items)
    values = metric.compute()
    for k in (10, 20):
        expected_recall = torch.stack([retrieval_recall(scores[u], relevant[u], top_k=k) for u in range(n_users)]).mean()
        expected_ndcg = torch.stack([retrieval_normalized_dcg(scores[u], relevant[u], top_k=k) for u in range(n_users)]).mean()
        assert float(values[f"recall@{k}"]) == pytest.approx(float(expected_recall), abs=1e-6)
        assert float(values[f"ndcg@{k}"]) == pytest.approx(float(expected_ndcg), abs=1e-6)
