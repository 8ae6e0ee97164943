import math

import pytest
import torch

from twotower.losses import in_batch_softmax_loss, known_item_mask

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
C = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
NEG = torch.tensor([[1.0, 1.0]])


def test_in_batch_with_one_extra_negative_hand_computed():
    # logits (B=2, B+N=3): row 0 = [1, 0, 1], row 1 = [0, 1, 1]; each row: log(2e + 1) - 1.
    loss = in_batch_softmax_loss(Q, C, temperature=1.0, negatives=NEG)
    assert loss.item() == pytest.approx(math.log(2 * math.e + 1) - 1, abs=1e-6)


def test_temperature_scales_logits():
    # t = 0.5 doubles the logits: row 0 = [2, 0, 2] -> log(2e^2 + 1) - 2.
    loss = in_batch_softmax_loss(Q, C, temperature=0.5, negatives=NEG)
    assert loss.item() == pytest.approx(math.log(2 * math.e**2 + 1) - 2, abs=1e-6)


def test_logq_correction_subtracts_log_probability_of_each_column():
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    neg_log_q = torch.log(torch.tensor([0.25]))
    loss = in_batch_softmax_loss(Q, C, 1.0, log_q=log_q, negatives=NEG, negatives_log_q=neg_log_q, negative_ids=torch.tensor([9]), candidate_ids=torch.tensor([0, 1]))
    # row 0 logits: [1 - ln .5, 0 - ln .25, 1 - ln .25]; row 1: [0 - ln .5, 1 - ln .25, 1 - ln .25]
    l, q4 = math.log(0.5), math.log(0.25)
    row0 = math.log(math.exp(1 - l) + math.exp(-q4) + math.exp(1 - q4)) - (1 - l)
    row1 = math.log(math.exp(-l) + math.exp(1 - q4) + math.exp(1 - q4)) - (1 - q4)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    half = in_batch_softmax_loss(Q, C, 1.0, log_q=log_q, negatives=NEG, negatives_log_q=neg_log_q, negative_ids=torch.tensor([9]), candidate_ids=torch.tensor([0, 1]), logq_weight=0.0)
    assert half.item() == pytest.approx(math.log(2 * math.e + 1) - 1, abs=1e-6)


def test_accidental_hit_is_not_a_negative():
    # Both rows have the same positive item: each row's only other column is masked -> loss 0.
    loss = in_batch_softmax_loss(Q, C, 1.0, candidate_ids=torch.tensor([5, 5]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # An extra negative that is row 0's positive is masked for row 0 only.
    loss = in_batch_softmax_loss(Q, C, 1.0, candidate_ids=torch.tensor([5, 6]), negatives=NEG, negative_ids=torch.tensor([5]))
    row0 = math.log(math.e + 1) - 1  # [1, 0, masked]
    row1 = math.log(2 * math.e + 1) - 1  # [0, 1, 1]
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_same_user_other_positive_is_not_a_negative():
    loss = in_batch_softmax_loss(Q, C, 1.0, query_ids=torch.tensor([3, 3]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    unmasked = in_batch_softmax_loss(Q, C, 1.0, query_ids=torch.tensor([3, 4]))
    assert unmasked.item() == pytest.approx(math.log(math.e + 1) - 1, abs=1e-6)


def test_explicit_mask_never_masks_the_positive():
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert in_batch_softmax_loss(Q, C, 1.0, mask=mask).item() == pytest.approx(0.0, abs=1e-6)


def test_extra_negatives_need_their_log_q():
    with pytest.raises(ValueError, match="negatives_log_q is required"):
        in_batch_softmax_loss(Q, C, 1.0, log_q=torch.zeros(2), negatives=NEG)


def test_gradient_flows_to_learnable_temperature():
    t = torch.tensor(0.5, requires_grad=True)
    in_batch_softmax_loss(Q, C, t).backward()
    assert t.grad is not None and t.grad.item() != 0


def test_known_item_mask_hand_computed():
    # Columns hold items [7, 3, 7, 9]; row 0 knows items 7 and 5, row 1 knows 9, row 2 nothing.
    known = torch.tensor([[0, 0, 1], [7, 5, 9]])
    mask = known_item_mask(known, torch.tensor([7, 3, 7, 9]), rows=3)
    assert mask.tolist() == [[True, False, True, False], [False, False, False, True], [False, False, False, False]]


def test_known_item_mask_removes_other_positives_from_the_softmax():
    # Row 0's user also likes item 1 (column 1): its logits become [1] alone, loss 0.
    loss = in_batch_softmax_loss(Q, C, temperature=1.0, mask=known_item_mask(torch.tensor([[0, 0], [10, 11]]), torch.tensor([10, 11]), rows=2))
    # Row 1 keeps [0, 1]: log(1 + e) - 1; the mean of the two rows.
    assert loss.item() == pytest.approx((math.log(1 + math.e) - 1) / 2, abs=1e-6)
