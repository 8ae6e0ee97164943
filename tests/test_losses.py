"""The retrieval loss, tweak by tweak, on 2x2 / 2x3 examples whose logits and values are written out."""
import math

import pytest
import torch

from twotower.task.losses import Columns, RetrievalLoss, known_item_mask

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
C = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
NEG = torch.tensor([[1.0, 1.0]])
PLAIN = RetrievalLoss(logq_weight=0.0, mask_accidental_hits=False, mask_same_user=False)


def columns(vectors, ids=None, log_q=None, users=None) -> Columns:
    """Columns with distinct ids and users and log_q 0 unless given."""
    n = len(vectors)
    ids = torch.arange(100, 100 + n) if ids is None else torch.tensor(ids)
    users = torch.arange(200, 200 + n) if users is None else torch.tensor(users)
    return Columns(vectors, ids, torch.zeros(n) if log_q is None else log_q, users)


def sampled(vectors, ids, log_q=None) -> Columns:
    """Extra negatives shared by the batch: nobody's positive (user -1)."""
    return columns(vectors, ids, log_q, [-1] * len(vectors))


def test_in_batch_with_one_extra_negative_hand_computed():
    # logits (B=2, B+N=3): row 0 = [1, 0, 1], row 1 = [0, 1, 1]; each row: log(2e + 1) - 1.
    loss = PLAIN(Q, columns(C) + sampled(NEG, [9]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2 * math.e + 1) - 1, abs=1e-6)


def test_temperature_scales_logits():
    # t = 0.5 doubles the logits: row 0 = [2, 0, 2] -> log(2e^2 + 1) - 2.
    loss = PLAIN(Q, columns(C) + sampled(NEG, [9]), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(2 * math.e**2 + 1) - 2, abs=1e-6)


def test_logq_correction_subtracts_log_probability_of_each_column():
    log_q, neg_log_q = torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25]))
    cols = columns(C, [0, 1], log_q) + sampled(NEG, [9], neg_log_q)
    loss = RetrievalLoss(logq_weight=1.0, mask_accidental_hits=True, mask_same_user=False)(Q, cols, 1.0)
    # row 0 logits: [1 - ln .5, 0 - ln .25, 1 - ln .25]; row 1: [0 - ln .5, 1 - ln .25, 1 - ln .25]
    l, q4 = math.log(0.5), math.log(0.25)
    row0 = math.log(math.exp(1 - l) + math.exp(-q4) + math.exp(1 - q4)) - (1 - l)
    row1 = math.log(math.exp(-l) + math.exp(1 - q4) + math.exp(1 - q4)) - (1 - q4)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    off = RetrievalLoss(logq_weight=0.0, mask_accidental_hits=True, mask_same_user=False)(Q, cols, 1.0)
    assert off.item() == pytest.approx(math.log(2 * math.e + 1) - 1, abs=1e-6)


def test_accidental_hit_is_not_a_negative():
    hits = RetrievalLoss(logq_weight=0.0, mask_accidental_hits=True, mask_same_user=False)
    # Both rows have the same positive item: each row's only other column is masked -> loss 0.
    assert hits(Q, columns(C, [5, 5]), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # An extra negative that is row 0's positive is masked for row 0 only.
    loss = hits(Q, columns(C, [5, 6]) + sampled(NEG, [5]), 1.0)
    row0 = math.log(math.e + 1) - 1  # [1, 0, masked]
    row1 = math.log(2 * math.e + 1) - 1  # [0, 1, 1]
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert PLAIN(Q, columns(C, [5, 5]), 1.0).item() == pytest.approx(math.log(math.e + 1) - 1, abs=1e-6)  # switched off


def test_same_user_other_positive_is_not_a_negative():
    same_user = RetrievalLoss(logq_weight=0.0, mask_accidental_hits=False, mask_same_user=True)
    assert same_user(Q, columns(C, users=[3, 3]), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert same_user(Q, columns(C, users=[3, 4]), 1.0).item() == pytest.approx(math.log(math.e + 1) - 1, abs=1e-6)
    # A sampled column (user -1) is nobody's positive.
    assert same_user(Q, columns(C, users=[3, 4]) + sampled(NEG, [9]), 1.0).item() == pytest.approx(math.log(2 * math.e + 1) - 1, abs=1e-6)


def test_known_items_never_mask_the_positive():
    every = torch.tensor([[0, 0, 1, 1], [100, 101, 100, 101]])  # each row knows both columns' items
    assert PLAIN(Q, columns(C), 1.0, known_items=every).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_to_learnable_temperature():
    t = torch.tensor(0.5, requires_grad=True)
    PLAIN(Q, columns(C), t).backward()
    assert t.grad is not None and t.grad.item() != 0


def test_known_item_mask_hand_computed():
    # Columns hold items [7, 3, 7, 9]; row 0 knows items 7 and 5, row 1 knows 9, row 2 nothing.
    known = torch.tensor([[0, 0, 1], [7, 5, 9]])
    mask = known_item_mask(known, torch.tensor([7, 3, 7, 9]), rows=3)
    assert mask.tolist() == [[True, False, True, False], [False, False, False, True], [False, False, False, False]]


def test_known_items_are_removed_from_the_softmax():
    # Row 0's user also likes item 11 (column 1): its logits become [1] alone, loss 0.
    loss = PLAIN(Q, columns(C, [10, 11]), temperature=1.0, known_items=torch.tensor([[0], [11]]))
    # Row 1 keeps [0, 1]: log(1 + e) - 1; the mean of the two rows.
    assert loss.item() == pytest.approx((math.log(1 + math.e) - 1) / 2, abs=1e-6)


def test_the_config_chooses_the_tweaks_once():
    names = [getattr(t, "__qualname__", "") for t in RetrievalLoss(logq_weight=1.0, mask_accidental_hits=False, mask_same_user=True).tweaks]
    assert names == ["add_row_negatives", "logq_correction.<locals>.correct", "exclude_same_user", "exclude_known_items"]


def test_a_fixed_temperature_is_the_one_given_and_a_learned_one_starts_at_or_above_its_floor():
    """loss.temperature=0.005 with the default min_temperature=0.01 trained at 0.01: the floor was applied to a fixed
    temperature too; and a learned one starting below the floor sat on the clamp, where it has no gradient, for good."""
    from twotower.module import TwoTowerModule

    fixed = TwoTowerModule(torch.nn.Linear(1, 1), torch.optim.Adam, temperature=0.005)
    assert float(fixed.temperature) == pytest.approx(0.005)
    learned = TwoTowerModule(torch.nn.Linear(1, 1), torch.optim.Adam, temperature=0.05, learn_temperature=True, min_temperature=0.01)
    assert float(learned.temperature) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"temperature=0.005 is below min_temperature=0.01: a learned temperature starts at or above its floor"):
        TwoTowerModule(torch.nn.Linear(1, 1), torch.optim.Adam, temperature=0.005, learn_temperature=True, min_temperature=0.01)
