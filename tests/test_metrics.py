import math

import pytest
import torch

from twotower.task.metrics import RetrievalMetrics, metrics_at_k, retrieval_hits


def test_hits_without_dense_matrix():
    top = torch.tensor([[3, 1, 4], [0, 2, 5]])
    targets = torch.tensor([[0, 0, 1], [4, 9, 5]])  # user 0 likes 4 and 9; user 1 likes 5
    hits, n_rel = retrieval_hits(top, targets, num_users=2, num_items=10)
    assert hits.tolist() == [[False, False, True], [False, False, True]]
    assert n_rel.tolist() == [2, 1]


def test_metrics_hand_computed():
    # One user, 3 relevant items, ranked hits at positions 1 and 3 of the top 4.
    hits = torch.tensor([[True, False, True, False]])
    m = metrics_at_k(hits, torch.tensor([3]), k=4)
    assert m["recall"].item() == pytest.approx(2 / 3)
    assert m["precision"].item() == pytest.approx(2 / 4)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"].item() == pytest.approx(dcg / idcg)
    assert m["map"].item() == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["mrr"].item() == pytest.approx(1.0)
    assert m["hitrate"].item() == 1.0
    at2 = metrics_at_k(hits, torch.tensor([3]), k=2)
    assert at2["recall"].item() == pytest.approx(1 / 3)
    assert at2["ndcg"].item() == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert at2["map"].item() == pytest.approx(1 / 2)  # normalised by min(3, k=2)


def test_no_hit_gives_zero_mrr():
    m = metrics_at_k(torch.tensor([[False, False]]), torch.tensor([1]), k=2)
    assert m["mrr"].item() == 0.0 and m["ndcg"].item() == 0.0


def test_metric_averages_users_and_skips_users_without_targets():
    metric = RetrievalMetrics(ks=[1, 2])
    top = torch.tensor([[1, 2], [2, 1], [0, 1]])
    targets = torch.tensor([[0, 1], [1, 2]])  # user 0 likes item 1 (hit @1), user 1 likes 2 (hit @1); user 2 none
    metric.update(top, targets, num_items=3)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0], [1]]), num_items=3)  # hit @2
    values = metric.compute()
    assert values["recall@1"].item() == pytest.approx(2 / 3)
    assert values["recall@2"].item() == pytest.approx(1.0)
    assert values["mrr@2"].item() == pytest.approx((1 + 1 + 0.5) / 3)
    assert metric.users.item() == 3


def test_bad_cutoffs():
    with pytest.raises(ValueError, match="cut-offs"):
        RetrievalMetrics(ks=[0, 5])


@pytest.mark.parametrize("num_items", [1_000_000, 10**15])
def test_hits_of_large_catalogues_equal_brute_force(num_items):
    # user * num_items + item stays exact in int64 (here up to 1023 * 10**15 < 2**63): no dense matrix, no overflow.
    generator = torch.Generator().manual_seed(0)
    n_users = 1024
    top = torch.randint(0, num_items, (n_users, 100), generator=generator)
    users = torch.randint(0, n_users, (5000,), generator=generator)
    items = torch.where(torch.rand(5000, generator=generator) < 0.5, top[users, torch.randint(0, 100, (5000,), generator=generator)],
                        torch.randint(0, num_items, (5000,), generator=generator))
    hits, n_relevant = retrieval_hits(top, torch.stack([users, items]), n_users, num_items)
    relevant = [set() for _ in range(n_users)]
    for user, item in zip(users.tolist(), items.tolist()):
        relevant[user].add(item)
    assert hits.tolist() == [[item in relevant[u] for item in row] for u, row in enumerate(top.tolist())]
    assert n_relevant.tolist() == torch.bincount(users, minlength=n_users).tolist()
