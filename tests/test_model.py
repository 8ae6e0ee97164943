import pytest
import torch

from twotower.features import build_encoder
from twotower.features.history import HistoryEncoder, mean_of_rows
from twotower.features.id import EmbeddingEncoder
from twotower.features.multi_hot import MultiHotEncoder
from twotower.features.text import TextEncoder
from twotower.model.towers import Tower
from twotower.model.two_tower import TwoTower

QUERY = [{"name": "user_id", "kind": "id", "cardinality": 5, "dim": 4}, {"name": "age", "kind": "numeric", "standardise": {"mean": 0.0, "std": 1.0}},
         {"name": "history", "kind": "history", "cardinality": 7, "dim": 4}]
CANDIDATE = [{"name": "item_id", "kind": "id", "cardinality": 7, "dim": 4},
             {"name": "genres", "kind": "multi_hot", "cardinality": 4, "dim": 3},
             {"name": "title", "kind": "text", "cardinality": 9, "dim": 3, "options": {"pooling": "attention", "transformer_layers": 1, "heads": 1, "max_len": 5}},
             {"name": "vec", "kind": "dense", "in_dim": 6, "dim": 2}]


def batch_query(n=3):
    return {"user_id": torch.tensor([0, 1, 4])[:n], "age": torch.randn(n), "history": torch.tensor([[1, 2, 0], [0, 0, 0], [6, 6, 3]])[:n]}


def batch_candidate(n=3):
    return {"item_id": torch.tensor([1, 0, 6])[:n], "genres": torch.tensor([[1, 2], [0, 0], [3, 0]])[:n],
            "title": torch.tensor([[1, 2, 0, 0, 0], [0, 0, 0, 0, 0], [8, 7, 6, 5, 4]])[:n], "vec": torch.randn(n, 6)}


def two_tower(share=True):
    return TwoTower(Tower(QUERY, [8], 5), Tower(CANDIDATE, [8], 5), share_item_embedding=share)


def test_towers_output_unit_vectors_of_one_dim():
    model = two_tower()
    q, c = model.encode_query(batch_query()), model.encode_candidate(batch_candidate())
    assert q.shape == c.shape == (3, 5)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))
    assert torch.isfinite(c).all()  # an empty text row (all padding) stays finite


def test_history_shares_the_item_id_table():
    model = two_tower(share=True)
    assert model.query_tower.encoders["history"].embedding is model.candidate_tower.encoders["item_id"].embedding
    assert two_tower(share=False).query_tower.encoders["history"].embedding is not two_tower(share=False).candidate_tower.encoders["item_id"].embedding


def test_mean_pooling_ignores_padding_and_empty_is_zero():
    enc = HistoryEncoder(7, 4)
    out = enc(torch.tensor([[1, 2, 0], [0, 0, 0]]))
    torch.testing.assert_close(out[0], enc.embedding.weight[[1, 2]].mean(0))
    assert torch.equal(out[1], torch.zeros(4))
    bag = MultiHotEncoder(4, 3)
    torch.testing.assert_close(bag(torch.tensor([[2, 0]]))[0], bag.embedding.weight[2])


def test_packed_and_padded_mean_agree_in_values_and_gradients():
    # Rows: padding at the end, a gap in the middle (history dropout), empty, a repeated item.
    indices = torch.tensor([[1, 2, 0, 0], [3, 0, 5, 0], [0, 0, 0, 0], [6, 6, 2, 0]])
    results = []
    for packed in (True, False):
        weight = torch.arange(28, dtype=torch.float).view(7, 4).requires_grad_()
        out = mean_of_rows(indices, weight, packed=packed)
        (out * torch.arange(16.0).view(4, 4)).sum().backward()
        results.append((out.detach(), weight.grad))
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close(results[0][0][1], torch.tensor([16.0, 17.0, 18.0, 19.0]))  # rows 3 and 5 of arange
    assert torch.equal(results[0][0][2], torch.zeros(4))


def test_attention_history_of_empty_user_is_zero_not_nan():
    enc = HistoryEncoder(7, 4, pooling="attention")
    out = enc(torch.tensor([[0, 0], [3, 0]]))
    assert torch.equal(out[0], torch.zeros(4))
    torch.testing.assert_close(out[1], enc.embedding.weight[3])


def test_history_dropout_only_in_training():
    enc = HistoryEncoder(7, 4, dropout=0.99)
    history = torch.tensor([[1, 2, 3, 4, 5, 6]])
    enc.eval()
    torch.testing.assert_close(enc(history)[0], enc.embedding.weight[1:7].mean(0))
    enc.train()
    torch.manual_seed(0)
    assert not torch.allclose(enc(history)[0], enc.embedding.weight[1:7].mean(0))


def test_oov_index_has_its_own_learned_vector():
    enc = EmbeddingEncoder(5, 4)
    assert not torch.equal(enc(torch.tensor([0]))[0], torch.zeros(4))


def test_an_unknown_id_adds_nothing_until_id_dropout_trains_its_row():
    """The id kind's out-of-vocabulary row starts at zero and AdamW (weight decay on) leaves it there while no row reads it."""
    model = two_tower()
    table = model.candidate_tower.encoders["item_id"].embedding.weight
    assert torch.equal(table[0], torch.zeros(4)) and table[1:].abs().sum() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)

    def step(item_ids):
        candidates = batch_candidate() | {"item_id": item_ids}
        loss = (model.encode_query(batch_query()) * model.encode_candidate(candidates)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step(torch.tensor([1, 2, 6]))  # known ids only (history padding reads row 0 as nothing either)
    assert torch.equal(table[0], torch.zeros(4))
    step(torch.tensor([1, 0, 6]))  # an id replaced by the unknown index, as id dropout does
    assert table[0].abs().sum() > 0


def test_text_mean_pooling_matches_manual_mean():
    enc = TextEncoder(9, 3)
    torch.testing.assert_close(enc(torch.tensor([[1, 4, 0]]))[0], enc.embedding.weight[[1, 4]].mean(0))


def test_config_round_trip_rebuilds_identical_model():
    model = two_tower()
    clone = TwoTower.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    query, candidate = batch_query(), batch_candidate()
    torch.testing.assert_close(clone.encode_query(query), model.encode_query(query))
    torch.testing.assert_close(clone.encode_candidate(candidate), model.encode_candidate(candidate))


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="no encoder for feature kind 'picture'"):
        build_encoder({"name": "x", "kind": "picture"})
    with pytest.raises(ValueError, match="query tower outputs dim 5, candidate tower 6"):
        TwoTower(Tower(QUERY, [8], 5), Tower(CANDIDATE, [8], 6))
    with pytest.raises(KeyError, match=r"lack feature\(s\) \['age'\]"):
        Tower(QUERY, [8], 5)({"user_id": torch.tensor([0]), "history": torch.tensor([[0]])})
    with pytest.raises(ValueError, match="history pooling 'max'"):
        HistoryEncoder(3, 2, pooling="max")


def _synthetic_preprocessor(query_history: dict):
    from twotower.data import TwoTowerDataModule
    from twotower.data.sources import SyntheticSource
    from twotower.data.splits import RandomSplit

    features = {"query": [{"name": "user_id", "kind": "id"}, {"name": "age", "kind": "numeric"}, query_history],
                "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genres", "kind": "multi_hot", "separator": "|"}, {"name": "title", "kind": "text"}]}
    datamodule = TwoTowerDataModule(SyntheticSource(n_users=60, n_items=40, seed=1), features, RandomSplit(test=0.1, val=0.1), batch_size=16)
    datamodule.setup("fit")
    return datamodule.prepared.preprocessor


def test_feature_dims_naming_no_feature_is_refused():
    """feature_dims keyed by a name no feature has (a typo, +model.feature_dims.titel=8) was accepted and changed nothing."""
    from twotower.model import build_two_tower

    profile = _synthetic_preprocessor({"name": "history", "kind": "history", "max_len": 8})
    assert build_two_tower(profile, embedding_dim=8, feature_dims={"title": 3}).candidate_tower.encoders["title"].embedding.embedding_dim == 3
    with pytest.raises(ValueError, match=r"model.feature_dims names 'titel', which is no feature \(features: age, genres, history, item_id, title, user_id\)"):
        build_two_tower(profile, embedding_dim=8, feature_dims={"titel": 3})


def test_query_hidden_dims_beside_a_click_history_tower_is_refused():
    """A click-history user tower takes its MLP widths from click_history.hidden_dims: query_hidden_dims was accepted and ignored."""
    from twotower.model import build_two_tower

    clicks = _synthetic_preprocessor({"name": "history", "kind": "history", "max_len": 8, "through_item_tower": True})
    with pytest.raises(ValueError, match=r"model.query_hidden_dims=\[7\] sets a profile tower's MLP, but the user tower reads 'history' "
                                         r"through the item tower: set model.click_history.hidden_dims"):
        build_two_tower(clicks, embedding_dim=8, query_hidden_dims=[7])
    widths = build_two_tower(clicks, embedding_dim=8, click_history={"hidden_dims": [7]}).query_tower
    assert any(getattr(layer, "out_features", None) == 7 for layer in widths.modules())


def test_feature_dims_of_a_history_that_shares_the_item_table_is_refused():
    """With share_item_embedding the history reads the item-id table, as wide as item_id: feature_dims.history=4 was accepted and ignored."""
    from twotower.model import build_two_tower

    profile = _synthetic_preprocessor({"name": "history", "kind": "history", "max_len": 8})
    with pytest.raises(ValueError, match=r"model.feature_dims.history=4: 'history' reads the item-id table of 'item_id' \(model.share_item_embedding\), "
                                         r"as wide as it: set model.feature_dims.item_id, or model.share_item_embedding=false"):
        build_two_tower(profile, embedding_dim=8, feature_dims={"history": 4})
    own = build_two_tower(profile, embedding_dim=8, feature_dims={"history": 4}, share_item_embedding=False)
    assert own.query_tower.encoders["history"].embedding.embedding_dim == 4
