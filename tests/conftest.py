"""Shared fixtures: composing the project's Hydra configs the way train.py does."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

CONF = Path(__file__).resolve().parents[1] / "conf"

# Keep the suite predictable on small CI machines.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> the train config with outputs under tmp_path, loggers off by default."""

    def _compose(*overrides: str, config_name: str = "train"):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose(config_name, overrides=[f"paths.output_dir={tmp_path}", *overrides])

    return _compose


@pytest.fixture
def fast_synthetic():
    """Overrides for a seconds-long training run on planted synthetic data."""
    return [
        "data=synthetic",
        "logger=none",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        "callbacks.early_stopping.patience=10",
    ]
