"""MIND impression metrics: hand-computed values, and the official evaluation script's functions as reference."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from twotower.task.impression_metrics import ImpressionMetrics, impression_metrics


# --- the MIND competition's evaluate.py, verbatim in substance
def mrr_score(y_true, y_score):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order)
    rr_score = y_true / (np.arange(len(y_true)) + 1)
    return np.sum(rr_score) / np.sum(y_true)


def dcg_score(y_true, y_score, k=10):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order[:k])
    gains = 2**y_true - 1
    discounts = np.log2(np.arange(len(y_true)) + 2)
    return np.sum(gains / discounts)


def ndcg_score(y_true, y_score, k=10):
    return dcg_score(y_true, y_score, k) / dcg_score(y_true, y_true, k)


def test_two_impressions_by_hand():
    # Impression 7: scores 0.9 (skip), 0.1 (click), 0.5 (click) -> ranked skip, click, click.
    #   AUC: no click outranks the skip -> 0. MRR: (1/2 + 1/3) / 2 = 0.416667.
    #   nDCG@5: (1/log2 3 + 1/log2 4) / (1 + 1/log2 3) = 1.130930 / 1.630930 = 0.693426.
    # Impression 3: click above skip -> AUC = MRR = nDCG = 1.
    scores = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8])
    labels = torch.tensor([0, 1, 1, 0, 1])
    impressions = torch.tensor([7, 7, 7, 3, 3])
    metric = ImpressionMetrics()
    metric.update(scores, labels, impressions)
    values = metric.compute()
    assert values["impression_auc"].item() == pytest.approx(0.5)
    assert values["impression_mrr"].item() == pytest.approx((0.416667 + 1) / 2, abs=1e-6)
    assert values["impression_ndcg@5"].item() == pytest.approx((0.693426 + 1) / 2, abs=1e-6)
    assert values["impression_ndcg@10"].item() == pytest.approx((0.693426 + 1) / 2, abs=1e-6)


def test_ties_count_one_half_in_auc():
    # One click and two skips, all tied: AUC 0.5 (as sklearn and the MIND script give).
    values = impression_metrics(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1, 0, 0]), torch.tensor([0, 0, 0]))
    assert values["impression_auc"].item() == pytest.approx(0.5)


def test_matches_the_official_script_on_random_impressions():
    rng = np.random.default_rng(0)
    scores, labels, groups, expected = [], [], [], {"impression_auc": [], "impression_mrr": [], "impression_ndcg@5": [], "impression_ndcg@10": []}
    for g in rng.permutation(60):
        n = int(rng.integers(2, 30))
        y = (rng.random(n) < 0.2).astype(int)
        y[0], y[-1] = 1, 0  # a click and a skip, as every MIND impression has
        # Coarse scores make ties, which AUC must average; the ranking metrics are checked on
        # tie-free scores (the official script breaks ties by argsort order, an accident of numpy).
        s = rng.integers(0, 5, n) + (rng.random(n) * 1e-3 if g % 2 else 0)
        scores.append(s), labels.append(y), groups.append(np.full(n, g))
        expected["impression_auc"].append(roc_auc_score(y, s))
        if g % 2:
            expected["impression_mrr"].append(mrr_score(y, s))
            expected["impression_ndcg@5"].append(ndcg_score(y, s, 5))
            expected["impression_ndcg@10"].append(ndcg_score(y, s, 10))
    got = impression_metrics(torch.tensor(np.concatenate(scores)), torch.tensor(np.concatenate(labels)), torch.tensor(np.concatenate(groups)))
    group_ids = sorted({int(g[0]) for g in groups})
    by_group = {name: dict(zip(group_ids, values.tolist())) for name, values in got.items()}
    order = [int(g[0]) for g in groups]
    np.testing.assert_allclose([by_group["impression_auc"][g] for g in order], expected["impression_auc"], atol=1e-12)
    odd = [g for g in order if g % 2]
    for name in ("impression_mrr", "impression_ndcg@5", "impression_ndcg@10"):
        np.testing.assert_allclose([by_group[name][g] for g in odd], expected[name], atol=1e-12)


def test_updates_in_chunks_equal_one_update_and_one_class_impressions_are_left_out():
    rng = np.random.default_rng(1)
    scores = torch.tensor(rng.random(40))
    labels = torch.tensor((rng.random(40) < 0.4).astype(int))
    impressions = torch.arange(40) // 5
    labels[35:] = 1  # impression 7: clicks only, no AUC
    whole = ImpressionMetrics()
    whole.update(scores, labels, impressions)
    chunks = ImpressionMetrics()
    chunks.update(scores[:20], labels[:20], impressions[:20])
    chunks.update(scores[20:], labels[20:], impressions[20:])
    assert whole.impressions.item() == chunks.impressions.item() == int(sum(0 < labels[i * 5 : i * 5 + 5].sum() < 5 for i in range(8)))
    for name, value in whole.compute().items():
        assert value.item() == pytest.approx(chunks.compute()[name].item())
