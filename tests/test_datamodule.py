import pandas as pd
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.sources import TableSource
from twotower.data.splits import PredefinedSplit
from twotower.data.tables import ITEM, USER


@pytest.fixture
def synthetic(compose_cfg):
    dm = instantiate(compose_cfg("data=synthetic").data)
    dm.setup()
    return dm


def test_target_never_in_its_own_history(synthetic):
    dm = synthetic
    batch = dm.train_batch(torch.arange(len(dm.prepared.train_pairs)))
    target = dm.prepared.item_vocab_index[batch.candidate_ids]
    assert not (batch.query["history"] == target.unsqueeze(1)).any()
    # The rest of the user's training items stay visible.
    assert (batch.query["history"] > 0).sum(1).float().mean() > 5


def test_batches_gather_the_rows_of_their_pairs(synthetic):
    dm = synthetic
    rows = torch.tensor([5, 0, 17])
    batch = dm.train_batch(rows)
    users, items = dm.prepared.train_pairs[rows].unbind(1)
    assert torch.equal(batch.query["user_id"], dm.prepared.users.columns["user_id"][users])
    assert torch.equal(batch.candidate["genres"], dm.prepared.items.columns["genres"][items])
    assert torch.equal(batch.log_q, dm.prepared.item_log_q[items])


def test_eval_batch_excludes_known_and_targets_heldout(synthetic):
    dm = synthetic
    users = dm.prepared.eval_users["test"][:4]
    batch = dm.eval_batch(users, "test")
    pairs = dm.prepared.tables.interactions.assign(split=dm.split(dm.prepared.tables.interactions))
    for pos, user_row in enumerate(users.tolist()):
        uid = dm.prepared.user_rows[user_row]
        mine = pairs[pairs[USER] == uid]
        known = set(dm.prepared.item_rows.get_indexer(mine.loc[mine.split != "test", ITEM]))
        held = set(dm.prepared.item_rows.get_indexer(mine.loc[mine.split == "test", ITEM]))
        assert set(batch.exclude[1][batch.exclude[0] == pos].tolist()) == known
        assert set(batch.targets[1][batch.targets[0] == pos].tolist()) == held


def test_vocabularies_fit_on_train_only(tmp_path):
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x", "y", "x", "z", "y"],
                          "split": ["train", "train", "train", "val", "test"]})
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "genres": ["A", "B", "Only-in-val"]})
    inter.to_csv(tmp_path / "i.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    features = {"query": [{"name": "user_id", "kind": "id"}],
                "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genres", "kind": "multi_hot"}]}
    dm = TwoTowerDataModule(TableSource(str(tmp_path / "i.csv"), items=str(tmp_path / "items.csv"), split="split"), features, PredefinedSplit(), batch_size=2)
    dm.setup()
    assert dm.prepared.preprocessor.item_ids.values == ["x", "y"]  # z is seen only in validation
    assert dm.prepared.preprocessor.candidate["genres"].vocab.values == ["A", "B"]
    z = dm.prepared.item_rows.get_loc("z")
    assert dm.prepared.items.columns["item_id"][z].item() == 0 and dm.prepared.items.columns["genres"][z].tolist() == [0]
    assert dm.prepared.preprocessor.user_ids.values == ["a", "b"]  # c has only a test interaction


def test_split_that_leaves_validation_empty_is_refused(tmp_path):
    inter = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "split": ["train", "test"]})
    inter.to_csv(tmp_path / "i.csv", index=False)
    dm = TwoTowerDataModule(TableSource(str(tmp_path / "i.csv"), split="split"),
                            {"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "item_id", "kind": "id"}]}, PredefinedSplit())
    with pytest.raises(ValueError, match=r"leaves 'val' empty .*i\.csv"):
        dm.setup()


def test_known_items_are_each_rows_training_items(compose_cfg, synthetic):
    dm = instantiate(compose_cfg("data=synthetic", "data.mask_known_positives=true").data)
    dm.setup()
    rows = torch.tensor([3, 40, 41])
    batch = dm.train_batch(rows)
    for pos, user in enumerate(dm.prepared.train_pairs[rows, 0].tolist()):
        train_items = set(dm.prepared.train_pairs[dm.prepared.train_pairs[:, 0] == user, 1].tolist())
        assert set(batch.known_items[1][batch.known_items[0] == pos].tolist()) == train_items
    assert synthetic.train_batch(rows).known_items is None  # off by default


def test_new_user_rows_lose_ids_and_history_but_keep_profile(compose_cfg, synthetic):
    dm = instantiate(compose_cfg("data=synthetic", "data.new_user_rate=0.5").data)
    dm.setup()
    torch.manual_seed(0)
    rows = torch.arange(400)
    batch, reference = dm.train_batch(rows), synthetic.train_batch(rows)
    new = batch.query["user_id"] == 0
    assert 0.4 < new.float().mean() < 0.6
    assert (batch.query["history"][new] == 0).all() and (batch.query["history"][~new] > 0).any(1).all()
    assert torch.equal(batch.query["user_id"][~new], reference.query["user_id"][~new])
    profile = [n for n in batch.query if n not in ("user_id", "history")]
    assert profile and all(torch.equal(batch.query[n], reference.query[n]) for n in profile)
    with pytest.raises(InstantiationException, match="new_user_rate=1.0"):
        instantiate(compose_cfg("data=synthetic", "data.new_user_rate=1.0").data)


@pytest.mark.parametrize("overrides, named", [
    (("data.use_ids=false", "data.id_dropout=0.3"), r"id_dropout=0.3: no feature is an id \(data.use_ids=false drops them\), so none would be dropped; set it to 0"),
    (("data.use_ids=false", "data.features.query=[{name: age, kind: numeric}]", "data.new_user_rate=0.3"),
     r"new_user_rate=0.3: the query side reads no id or history \(features: age\), so every row already reads as a new user's; set it to 0"),
])
def test_a_step_with_nothing_to_change_is_refused_at_set_up(compose_cfg, overrides, named):
    """Content-only towers (data.use_ids=false, experiment=content_only) have no id to drop: id_dropout was accepted and
    changed no batch; new-user rows without an id or history feature to forget likewise."""
    dm = instantiate(compose_cfg("data=synthetic", "data.source.n_users=60", *overrides).data)
    with pytest.raises(ValueError, match=named):
        dm.setup()


def _tensors(value, path="prepared"):
    """Every tensor reachable from ``value`` (dataclasses, dicts), with where it sits."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        yield path, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{path}[{k!r}]")


def test_prepared_data_moves_to_a_device_whole(synthetic):
    """What a GPU run does once per process, on the meta device: every tensor moves, plain values stay."""
    moved = synthetic.prepared.to(torch.device("meta"))
    found = dict(_tensors(moved))
    assert found and all(t.device.type == "meta" for t in found.values()), [p for p, t in found.items() if t.device.type != "meta"]
    assert moved.split_counts == synthetic.prepared.split_counts
