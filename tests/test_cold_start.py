"""Cold-start protocols: held-out items / users never reach training, and ranking is restricted as the protocol says."""
import numpy as np
import pandas as pd
import pytest
import torch

from twotower.data import TwoTowerDataModule
from twotower.data.sources import SyntheticSource
from twotower.data.splits import ColdStartItems, ColdStartUsers
from twotower.model import build_two_tower
from twotower.module import TwoTowerModule
from twotower.task.retrieval import encode_catalogue, rank

FEATURES = {
    "query": [{"name": "user_id", "kind": "id"}, {"name": "segment", "kind": "categorical"}],
    "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genres", "kind": "multi_hot", "separator": "|"}],
}


def _interactions():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"user_id": rng.integers(0, 40, 600), "item_id": rng.integers(0, 50, 600), "timestamp": rng.permutation(600)})


@pytest.mark.parametrize("split, column", [(ColdStartItems(test=0.2, val=0.1, seed=5), "item_id"), (ColdStartUsers(test=0.2, val=0.1, seed=5), "user_id")])
def test_held_out_entities_never_reach_training(split, column):
    interactions = _interactions()
    labels = split(interactions)
    groups = interactions.groupby(labels)[column].agg(lambda s: set(s))
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    n = interactions[column].nunique()
    assert len(groups["test"]) == round(0.2 * n)
    assert len(groups["val"]) == round((n - round(0.2 * n)) * 0.1)
    pd.testing.assert_series_equal(labels, split(interactions))  # deterministic for a seed


def test_cold_users_reveal_their_earliest_interactions_to_training():
    interactions = _interactions()
    cold = ColdStartUsers(test=0.2, val=0.0, seed=1)(interactions)
    revealed = ColdStartUsers(test=0.2, val=0.0, reveal=2, seed=1)(interactions)
    for user in interactions.loc[cold == "test", "user_id"].unique():
        rows = interactions[interactions["user_id"] == user].sort_values("timestamp")
        assert revealed[rows.index].tolist() == ["train"] * 2 + ["test"] * (len(rows) - 2)


def test_reveal_must_not_be_negative():
    with pytest.raises(ValueError, match="reveal=-1"):
        ColdStartUsers(reveal=-1)


def test_cold_items_rank_only_the_held_out_items():
    dm = TwoTowerDataModule(SyntheticSource(n_users=80, n_items=60, interactions_per_user=10, seed=2), FEATURES, ColdStartItems(seed=2), candidates="heldout", batch_size=64)
    dm.setup("fit")
    test_items = torch.unique(dm.prepared.heldout["test"].indices)
    assert torch.equal(dm.prepared.candidates["test"].nonzero().squeeze(1), test_items)
    assert not set(test_items.tolist()) & set(dm.prepared.train_pairs[:, 1].tolist())
    module = TwoTowerModule(build_two_tower(dm.prepared.preprocessor, embedding_dim=8, hidden_dims=[], output_dim=8), optimizer=torch.optim.Adam)
    catalogue = encode_catalogue(module.model.encode_candidate, dm.catalogue())
    batch = dm.eval_batch(dm.prepared.eval_users["test"], "test")
    top = rank(module.model.encode_query(batch.query), catalogue, 5, batch.exclude, batch.candidates).indices
    assert set(top.flatten().tolist()) <= set(test_items.tolist())


def test_candidates_must_be_all_or_heldout():
    with pytest.raises(ValueError, match="candidates='some'"):
        TwoTowerDataModule(SyntheticSource(), FEATURES, ColdStartItems(), candidates="some")


def test_sample_recommendations_rank_only_the_candidates_as_the_evaluation_does(tmp_path):
    """Under the cold-start-items protocol the callback's table lists only the split's held-out (cold) items."""
    from twotower.callbacks.sample_recommendations import SampleRecommendations

    dm = TwoTowerDataModule(SyntheticSource(n_users=80, n_items=60, interactions_per_user=10, seed=2), FEATURES, ColdStartItems(seed=2), candidates="heldout", batch_size=64)
    dm.setup("fit")
    module = TwoTowerModule(build_two_tower(dm.prepared.preprocessor, embedding_dim=8, hidden_dims=[], output_dim=8), optimizer=torch.optim.Adam)
    table = SampleRecommendations(tmp_path, n_users=5, k=10).recommendations(module, dm)
    val_items = {dm.prepared.item_rows[i] for i in torch.unique(dm.prepared.heldout["val"].indices).tolist()}
    assert len(table) and set(table["item_id"]) <= val_items
