"""Beyond-accuracy metrics: hand-computed values on a 3-user, 4-item example, and logging by the module."""
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from twotower.task.beyond_accuracy import BeyondAccuracyMetrics, gini, intra_list_diversity, item_vectors_from_interactions, log_volume
from twotower.training import train

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_gini_of_hand_counts():
    assert float(gini(torch.tensor([1.0, 1.0, 1.0, 1.0]))) == pytest.approx(0.0)
    assert float(gini(torch.tensor([0.0, 0.0, 0.0, 1.0]))) == pytest.approx(0.75)
    assert float(gini(torch.tensor([2.0, 1.0, 2.0, 1.0]))) == pytest.approx(1 / 6)


def test_diversity_and_volume_of_cereals_and_coffee():
    cereal, other_cereal, coffee = torch.tensor([1.0, 0.0]), torch.tensor([0.995, math.sqrt(1 - 0.995**2)]), torch.tensor([0.0, 1.0])
    cereals = torch.stack([cereal, other_cereal]).unsqueeze(0)  # (1, 2, 2)
    cereal_and_coffee = torch.stack([cereal, coffee]).unsqueeze(0)
    assert float(intra_list_diversity(cereals)) == pytest.approx(1 - 0.995, abs=1e-6)
    assert float(intra_list_diversity(cereal_and_coffee)) == pytest.approx(1.0)
    eps = 1e-3
    # det [[1+e, c], [c, 1+e]] = (1+e)^2 - c^2
    assert float(log_volume(cereals, eps)) == pytest.approx(math.log((1 + eps) ** 2 - 0.995**2), rel=1e-4)
    assert float(log_volume(cereal_and_coffee, eps)) == pytest.approx(2 * math.log(1 + eps), abs=1e-6)
    assert float(log_volume(cereal_and_coffee)) > float(log_volume(cereals))


def test_item_vectors_keep_the_cosine_of_item_columns():
    # Items 0 and 1 were taken by the same users, item 2 by another user, item 3 by nobody.
    users, items = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 2])
    vectors = item_vectors_from_interactions(users, items, num_users=3, num_items=4, dim=8)
    similarity = vectors @ vectors.T
    assert float(similarity[0, 1]) == pytest.approx(1.0, abs=1e-5)
    assert float(similarity[0, 2]) == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(vectors[3], torch.zeros_like(vectors[3]))
    # A repeated pair counts once: item 0 taken twice by user 0 is still the column [1, 1] of item 1.
    repeated = item_vectors_from_interactions(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 0, 1]), num_users=2, num_items=2, dim=2)
    assert float(repeated[0] @ repeated[1]) == pytest.approx(1.0, abs=1e-5)


def test_metrics_of_a_hand_example():
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    metric = BeyondAccuracyMetrics(vectors, item_popularity=torch.tensor([3, 1, 0, 0]), user_activity=torch.tensor([1, 5, 10]), num_users=3, ks=[1, 2])
    metric.set_activity_cuts(torch.tensor([0, 1, 2]))  # light, medium, heavy
    top = torch.tensor([[0, 1], [0, 2], [2, 3]])
    targets = torch.tensor([[0, 1, 2, 2], [1, 3, 2, 3]])  # user 0: item 1; user 1: item 3; user 2: items 2, 3
    metric.update(top, targets, users=torch.tensor([0, 1, 2]), num_items=4)
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values["coverage@1"] == pytest.approx(2 / 4)
    assert values["coverage@2"] == pytest.approx(4 / 4)
    assert values["diversity@2"] == pytest.approx(1 / 3)
    # self-information -log2((count + 1) / (3 + 1)): items 0..3 -> 0, 1, 2, 2
    assert values["novelty@2"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    assert values["longtail@2"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # the head is item 0 alone
    assert values["gini@2"] == pytest.approx(1 / 6, abs=1e-6)  # exposure [2, 1, 2, 1]
    assert values["recall_light@2"] == pytest.approx(1.0)
    assert values["recall_medium@2"] == pytest.approx(0.0)
    assert values["recall_heavy@2"] == pytest.approx(1.0)
    assert values["recall_heavy@1"] == pytest.approx(0.5)
    eps = 1e-3
    expected_volume = (2 * math.log(2 * eps + eps**2) + 2 * math.log(1 + eps)) / 3
    assert values["volume@2"] == pytest.approx(expected_volume, rel=1e-3)


def test_update_without_activity_cuts_is_an_error():
    metric = BeyondAccuracyMetrics(torch.eye(2), torch.tensor([1, 1]), torch.tensor([1]), num_users=1, ks=[1])
    with pytest.raises(ValueError, match="set_activity_cuts"):
        metric.update(torch.tensor([[0]]), torch.tensor([[0], [0]]), torch.tensor([0]), num_items=2)


def test_module_logs_beyond_accuracy_next_to_accuracy(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["data=synthetic", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "logger=none", "callbacks=none", "test=false", f"paths.output_dir={tmp_path}"])
    metrics, _ = train(cfg)
    for name in ("recall@20", "coverage@20", "diversity@20", "volume@20", "novelty@20", "gini@20", "longtail@20", "recall_light@20", "recall_heavy@10", "age@20", "fresh@20"):
        assert f"val/{name}" in metrics, sorted(metrics)
    assert 0.0 < metrics["val/coverage@20"] <= 1.0
    assert metrics["val/novelty@20"] > 0.0


def test_users_without_history_are_light():
    metric = BeyondAccuracyMetrics(torch.eye(2), torch.tensor([1, 1]), user_activity=torch.tensor([0, 0]), num_users=2, ks=[1])
    metric.set_activity_cuts(torch.tensor([0, 1]))
    metric.update(torch.tensor([[0], [1]]), torch.tensor([[0, 1], [0, 0]]), torch.tensor([0, 1]), num_items=2)
    values = metric.compute()
    assert float(values["recall_light@1"]) == pytest.approx(0.5)
    assert float(values["recall_heavy@1"]) == 0.0
