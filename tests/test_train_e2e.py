"""train(cfg) end to end: planted synthetic data, and (slow) real MovieLens-100K against the issue's targets."""
import pytest
import torch

from twotower.task.metrics import RetrievalMetrics
from twotower.task.retrieval import top_k
from twotower.training import train


def popularity_recall_at_20(dm, split="test"):
    """Recall@20 of ranking by how often each item is known (train, + val at test time), same exclusions."""
    users = dm.prepared.eval_users[split]
    batch = dm.eval_batch(users, split)
    scores = torch.bincount(dm.prepared.known[split].indices, minlength=len(dm.prepared.items)).float().expand(len(users), -1).clone()
    metric = RetrievalMetrics(ks=[20])
    metric.update(top_k(scores, 20, batch.exclude).indices, batch.targets, len(dm.prepared.items))
    return metric.compute()["recall@20"].item()


def test_trained_model_beats_popularity_on_synthetic(compose_cfg, fast_synthetic):
    metrics, objects = train(compose_cfg(*fast_synthetic))
    popularity = popularity_recall_at_20(objects["datamodule"])
    assert metrics["test/recall@20"] > popularity + 0.1, (metrics["test/recall@20"], popularity)
    assert objects["best_checkpoint"] and objects["best_checkpoint"].endswith(".ckpt")
    for name in ("val/recall@20", "val/ndcg@10", "val/map@10", "val/mrr@10", "val/precision@10", "val/hitrate@10", "test/recall@20"):
        assert 0.0 <= metrics[name] <= 1.0


def test_checkpoint_carries_what_export_needs(compose_cfg, fast_synthetic):
    _, objects = train(compose_cfg(*fast_synthetic, "trainer.max_epochs=1", "test=false"))
    saved = torch.load(objects["best_checkpoint"], map_location="cpu", weights_only=False)["twotower"]
    assert saved["model_config"]["query"]["output_dim"] == 64
    assert saved["preprocessor"]["item_ids"] == objects["datamodule"].prepared.preprocessor.item_ids.values
    assert saved["run_config"]["data"]["source"]["_target_"].endswith("SyntheticSource")


def test_content_only_towers_are_one_override_away(compose_cfg, fast_synthetic):
    metrics, objects = train(compose_cfg(*fast_synthetic, "data.use_ids=false", "test=false"))
    kinds = {f["kind"] for f in objects["module"].model.config["candidate"]["features"]}
    assert "id" not in kinds and metrics["val/recall@20"] > 0.2


@pytest.mark.slow
def test_movielens_default_config_meets_targets(compose_cfg):
    """The README's quality claim: random per-user 80/20 split, seed 42, full-catalogue ranking."""
    metrics, _ = train(compose_cfg("logger=none", "trainer.enable_progress_bar=false"))
    assert metrics["test/recall@20"] >= 0.30
    assert metrics["test/ndcg@10"] >= 0.33
