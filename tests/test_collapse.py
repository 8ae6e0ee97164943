"""A run whose towers collapse (every item the same vector) stops with the reason named, not with exit status 0."""
from __future__ import annotations

import pytest

from twotower.collapse import CollapsedModelError
from twotower.training import train


def test_a_learning_rate_far_too_high_stops_the_run_naming_it(compose_cfg, fast_synthetic, tmp_path):
    with pytest.raises(CollapsedModelError, match=r"collapsed by epoch 1: every item's vector is within .*optimizer\.lr=1000000\.0"):
        train(compose_cfg(*fast_synthetic, "optimizer.lr=1e6", "test=false"))
    assert not list((tmp_path / "checkpoints").glob("epoch*.ckpt")), "no checkpoint of the collapsed model is selected"


def test_a_healthy_run_is_not_stopped(compose_cfg, fast_synthetic):
    metrics, _ = train(compose_cfg(*fast_synthetic, "trainer.max_epochs=1", "test=false"))
    assert metrics["val/recall@20"] > 0


def test_a_loss_that_does_not_fall_stops_the_run_naming_the_learning_rate(compose_cfg, fast_synthetic):
    with pytest.raises(CollapsedModelError, match=r"not learning: 3 epochs after the first, the mean training loss is still .*optimizer\.lr=1e-12"):
        train(compose_cfg(*fast_synthetic, "optimizer.lr=1e-12", "test=false"))
