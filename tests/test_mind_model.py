"""Impression negatives in the softmax (hand-computed), and the click-history user tower."""
import math

import pytest
import torch

from twotower.model.history_tower import ClickHistoryTower
from twotower.model.towers import Tower
from twotower.model.two_tower import TwoTower
from twotower.task.losses import Columns, RetrievalLoss, RowNegatives


def test_row_negatives_join_each_rows_softmax():
    # Row 0: positive logit 1, in-batch negative 0, own negatives 0.5 and a padded slot:
    #   loss0 = log(e + 1 + e^0.5) - 1 = log(5.367003) - 1 = 0.680270
    # Row 1: positive logit 1, in-batch negative 0, own negatives 1 and 0:
    #   loss1 = log(1 + e + e + 1) - 1 = log(7.436564) - 1 = 1.006409
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidate = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    vectors = torch.tensor([[[0.5, 0.0], [9.0, 9.0]], [[0.0, 1.0], [1.0, 0.0]]])  # (B=2, M=2, D=2)
    padding = torch.tensor([[False, True], [False, False]])
    loss = PLAIN(query, _columns(candidate), 1.0, row_negatives=RowNegatives(vectors, padding, torch.zeros(2, 2)))
    assert loss.item() == pytest.approx((0.680270 + 1.006409) / 2, abs=1e-6)


def test_row_negatives_get_their_items_log_q_correction_and_all_padding_is_plain_in_batch():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidate = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    logq = RetrievalLoss(logq_weight=1.0, mask_accidental_hits=False, mask_same_user=False)
    cols = _columns(candidate, log_q=torch.tensor([-1.0, -2.0]))
    plain = logq(query, cols, 1.0)
    padded = logq(query, cols, 1.0, row_negatives=RowNegatives(torch.ones(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3)))
    assert padded.item() == pytest.approx(plain.item())
    # Temperature 0.5; in-batch logits 1.2 / 1.6 plus 1 or 2 (-log_q); one row negative each with
    # raw logit 0.5 / 0.5 = 1.0, plus 3 (row 0) or 0.5 (row 1) from its own log_q.
    one = logq(query, cols, 0.5, row_negatives=RowNegatives(torch.tensor([[[0.5, 0.0]], [[0.0, 0.5]]]), torch.zeros(2, 1, dtype=torch.bool),
                                                            torch.tensor([[-3.0], [-0.5]])))
    rows = [
        -math.log(math.exp(1.2 + 1) / (math.exp(1.2 + 1) + math.exp(1.6 + 2) + math.exp(1.0 + 3))),
        -math.log(math.exp(1.2 + 2) / (math.exp(1.6 + 1) + math.exp(1.2 + 2) + math.exp(1.0 + 0.5))),
    ]
    assert one.item() == pytest.approx(sum(rows) / 2, abs=1e-6)
    # Without the logQ tweak, row negatives are not corrected either.
    uncorrected = PLAIN(query, cols, 0.5, row_negatives=RowNegatives(torch.tensor([[[0.5, 0.0]], [[0.0, 0.5]]]), torch.zeros(2, 1, dtype=torch.bool),
                                                                     torch.tensor([[-3.0], [-0.5]])))
    rows = [-math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6) + math.exp(1.0))), -math.log(math.exp(1.2) / (math.exp(1.6) + math.exp(1.2) + math.exp(1.0)))]
    assert uncorrected.item() == pytest.approx(sum(rows) / 2, abs=1e-6)


PLAIN = RetrievalLoss(logq_weight=0.0, mask_accidental_hits=False, mask_same_user=False)


def _columns(candidate, log_q=None):
    n = len(candidate)
    return Columns(candidate, torch.arange(n), torch.zeros(n) if log_q is None else log_q, torch.arange(n))


def _towers(pooling="mean", user_features=()):
    items = Tower([{"name": "title", "kind": "text", "cardinality": 20, "dim": 8}, {"name": "category", "kind": "categorical", "cardinality": 5, "dim": 4}], hidden_dims=[16], output_dim=8)
    return ClickHistoryTower(items, "history", list(user_features), pooling=pooling), items


def _history(index, present, item_title, item_category):
    return {"history.index": index, "history.present": present, "history.title": item_title, "history.category": item_category}


def test_history_is_read_by_the_item_tower_itself_and_mean_pooled():
    torch.manual_seed(0)
    users, items = _towers(pooling="mean")
    assert users.items is items  # shared weights, not a copy
    titles, categories = torch.randint(1, 20, (3, 4)), torch.tensor([1, 2, 3])
    index = torch.tensor([[0, 2, 0], [1, 1, 0]])
    present = torch.tensor([[True, True, False], [True, False, False]])
    out = users(_history(index, present, titles, categories))  # (2, 8)
    item_vectors = items({"title": titles, "category": categories})  # (3, 8)
    expected = torch.nn.functional.normalize(users.mlp(torch.stack([(item_vectors[0] + item_vectors[2]) / 2, item_vectors[1]])), dim=-1)
    torch.testing.assert_close(out, expected)
    # Gradients reach the item tower through the user side.
    out.sum().backward()
    assert items.encoders["title"].embedding.weight.grad.abs().sum() > 0


def test_attention_pooling_ignores_slot_order_and_padding_and_empty_history_gets_a_vector():
    torch.manual_seed(1)
    users, _ = _towers(pooling="attention")
    with torch.no_grad():
        users.empty.copy_(torch.randn(8))
    titles, categories = torch.randint(1, 20, (4, 4)), torch.tensor([1, 2, 3, 4])
    a = users(_history(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[True, True, True, False]]), titles, categories))
    b = users(_history(torch.tensor([[2, 3, 0, 1]]), torch.tensor([[True, False, True, True]]), titles, categories))
    torch.testing.assert_close(a, b)
    empty = users(_history(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), titles, categories))
    expected = torch.nn.functional.normalize(users.mlp(users.empty.unsqueeze(0)), dim=-1)
    torch.testing.assert_close(empty, expected)
    assert torch.isfinite(empty).all() and empty.norm().item() == pytest.approx(1.0)


def test_user_id_embedding_joins_after_pooling_and_config_round_trips():
    torch.manual_seed(2)
    users, items = _towers(pooling="attention", user_features=[{"name": "user_id", "kind": "id", "cardinality": 10, "dim": 4}])
    model = TwoTower(users, items, share_item_embedding=False)
    rebuilt = TwoTower.from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.query_tower.items is rebuilt.candidate_tower
    features = {**_history(torch.tensor([[0, 1]]), torch.tensor([[True, True]]), torch.randint(1, 20, (2, 4)), torch.tensor([1, 2])), "user_id": torch.tensor([3])}
    torch.testing.assert_close(model.encode_query(features), rebuilt.encode_query(features))
    other_user = {**features, "user_id": torch.tensor([4])}
    assert not torch.allclose(model.encode_query(features), model.encode_query(other_user))


def test_missing_history_inputs_are_named():
    users, _ = _towers()
    with pytest.raises(KeyError, match=r"history.title.*data module must write the history items' features"):
        users({"history.index": torch.zeros(1, 2, dtype=torch.long), "history.present": torch.ones(1, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="pooling 'max' is not one of mean, attention"):
        _towers(pooling="max")
