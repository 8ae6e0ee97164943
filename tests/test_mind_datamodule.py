"""MIND through the one data module: click histories, impression negatives, evaluation impressions, training end to end."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from twotower.data import TwoTowerDataModule
from twotower.data.splits import PredefinedSplit
from twotower.datasets.mind import MindSource
from twotower.datasets.mind.evaluation import evaluate_impressions, model_scorer, popularity_scorer
from twotower.datasets.mind.generator import generate_mind
from twotower.datasets.mind.tables import IMPRESSION
from twotower.training import train

CONF = Path(__file__).resolve().parents[1] / "conf"
FEATURES = {
    "query": [{"name": "history", "kind": "history", "max_len": 6, "through_item_tower": True}],
    "candidate": [{"name": "category", "kind": "categorical"}, {"name": "title", "kind": "text", "max_len": 12}],
}


@pytest.fixture(scope="module")
def mind_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mind")
    generate_mind(path, users=300, news=500, train_impressions=2400, seed=0)
    return path


@pytest.fixture(scope="module")
def datamodule(mind_dir):
    dm = TwoTowerDataModule(MindSource(str(mind_dir), seed=0), FEATURES, PredefinedSplit(), impression_negatives=3, batch_size=64, eval_batch_size=50, seed=0)
    dm.setup("fit")
    return dm


def test_history_is_the_lines_latest_clicks_most_recent_first_without_the_target(datamodule):
    tables = datamodule.prepared.tables
    line = next(i for i, h in tables.histories.items() if len(h) > 8 and tables.impression_meta.loc[i, "split"] == "train")
    user = torch.tensor([datamodule.prepared.user_rows.get_loc(tables.impression_meta.loc[line, "user_id"])])
    query = datamodule.query_features(user, "train", impressions=torch.tensor([line]))
    rows = query["history.index"][0]
    names = datamodule.prepared.item_rows[(torch.unique(datamodule.prepared.impressions.histories[line])[rows] - 1).numpy()]
    assert list(names) == list(reversed(tables.histories[line]))[:6]
    assert query["history.present"].all()
    title_len = datamodule.prepared.preprocessor.candidate["title"].max_len
    assert query["history.title"].shape[1:] == (title_len,) and query["history.category"].ndim == 1
    target = torch.tensor([datamodule.prepared.item_rows.get_loc(tables.histories[line][-1])])
    masked = datamodule.query_features(user, "train", clicked=target, impressions=torch.tensor([line]))
    assert masked["history.present"][0].tolist() == [False] + [True] * 5


def test_impression_negatives_are_the_skips_of_the_clicks_impression(datamodule):
    torch.manual_seed(0)
    tables = datamodule.prepared.tables
    shown = tables.impressions
    rows = torch.arange(len(datamodule.prepared.train_pairs))
    impressions = datamodule.prepared.impressions.of_train_pair[rows]
    negatives, padding = datamodule.prepared.impressions.skipped_items(impressions, 3)
    skips = shown[shown["label"] == 0].groupby(IMPRESSION)["item_id"].apply(set).to_dict()
    for impression, items, pad in zip(impressions.tolist(), negatives.tolist(), padding.tolist()):
        taken = [datamodule.prepared.item_rows[i] for i, p in zip(items, pad) if not p]
        assert set(taken) <= skips.get(impression, set())
        assert len(taken) == len(set(taken)) == min(3, len(skips.get(impression, ())))
    batch = datamodule.train_batch(torch.arange(64))
    title_len = datamodule.prepared.preprocessor.candidate["title"].max_len
    assert batch.row_negatives["title"].shape == (64, 3, title_len) and batch.row_negatives_mask.shape == (64, 3)


def test_evaluation_batches_carry_every_dev_impression_once(datamodule):
    meta = datamodule.prepared.tables.impression_meta
    seen = []
    for users in datamodule.prepared.eval_users["val"].split(50):
        batch = datamodule.eval_batch(users, "val")
        position, item, impression, label = batch.impressions
        # Each shown item points at its impression's own query (the user's features, the line's history).
        lines = torch.unique(impression)
        assert (lines[position] == impression).all()
        assert (datamodule.prepared.impressions.user_of[lines] == torch.tensor(datamodule.prepared.user_rows.get_indexer(meta.loc[lines.numpy(), "user_id"]))).all()
        assert batch.impression_query["history.present"].shape[0] == len(lines)
        seen.append(impression)
    seen = torch.cat(seen)
    val = datamodule.prepared.tables.impressions[datamodule.prepared.tables.impressions[IMPRESSION].isin(meta.index[meta["split"] == "val"])]
    assert len(seen) == len(val)
    assert np.array_equal(np.sort(np.unique(seen.numpy())), np.sort(val[IMPRESSION].unique()))


def test_train_data_mind_beats_popularity_and_ranks_fresh_news_from_text(mind_dir):
    overrides = [
        "experiment=mind_text", f"data.source.path={mind_dir}", "data.features.query.0.max_len=10", "data.batch_size=128",
        "trainer.max_epochs=4", "logger=none", "callbacks=none", "test=false", "+trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false", "model.embedding_dim=32", "model.hidden_dims=[64]", "model.output_dim=32",
        "model.click_history.attention_dim=32", "paths.output_dir=/tmp/unused",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.set_num_threads(1)
    metrics, objects = train(cfg)
    assert {"val/impression_auc", "val/impression_mrr", "val/impression_ndcg@5", "val/impression_ndcg@10", "val/recall@50"} <= set(metrics)
    dm, model = objects["datamodule"], objects["module"].model
    towers = evaluate_impressions(dm, "val", model_scorer(model, dm, "val"))
    popularity = evaluate_impressions(dm, "val", popularity_scorer(dm))
    assert towers["impression_auc"] == pytest.approx(metrics["val/impression_auc"], abs=1e-4)  # the logged metric is this one
    assert towers["impression_auc"] > popularity["impression_auc"] + 0.15
    fresh = evaluate_impressions(dm, "val", model_scorer(model, dm, "val"), fresh_only=True)
    assert fresh["impressions"] > 50 and fresh["impression_auc"] > 0.7


def test_every_batch_step_applies_to_mind_as_to_any_source(mind_dir):
    """Sampled negatives, id dropout, new-user rows and known-positive masking work on MIND's click histories too."""
    features = {"query": [{"name": "user_id", "kind": "id"}, *FEATURES["query"]], "candidate": [{"name": "item_id", "kind": "id"}, *FEATURES["candidate"]]}
    dm = TwoTowerDataModule(MindSource(str(mind_dir), seed=0), features, PredefinedSplit(), batch_size=64, seed=0, impression_negatives=2,
                            num_negatives=5, id_dropout=0.5, new_user_rate=0.5, mask_known_positives=True)
    dm.setup("fit")
    torch.manual_seed(0)
    batch = dm.train_batch(torch.arange(64))
    assert batch.negatives["title"].shape[0] == 5 and batch.row_negatives["title"].shape[:2] == (64, 2)
    assert batch.known_items.shape[0] == 2 and batch.known_items.shape[1] > 0
    lines = dm.prepared.impressions.histories[dm.prepared.impressions.of_train_pair[:64]]  # each click's own history line
    new = ~batch.query["history.present"].any(1) & (lines > 0).any(1)
    assert new.any(), "some rows with a history are shown as first-time users"
    assert (batch.query["user_id"][new] == 0).all() and (batch.query["history"][new] == 0).all()
    dropped = (batch.candidate["item_id"] == 0).float().mean()
    assert 0.3 < dropped < 0.7  # ids of the positives go out of vocabulary at the id_dropout rate
