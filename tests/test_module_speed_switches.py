"""The module's speed switches: torch.compile of the towers, and the per-step loss kept off the progress bar."""
from functools import partial

import pytorch_lightning as pl
import torch

from twotower.data import TwoTowerDataModule
from twotower.data.sources import SyntheticSource
from twotower.data.splits import RandomSplit
from twotower.model import build_two_tower
from twotower.module import TwoTowerModule

IDS_ONLY = {"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "item_id", "kind": "id"}]}


def _datamodule() -> TwoTowerDataModule:
    datamodule = TwoTowerDataModule(SyntheticSource(n_users=30, n_items=20), IDS_ONLY, RandomSplit(test=0.0, val=0.2), batch_size=8)
    datamodule.setup("fit")
    return datamodule


def _module(datamodule: TwoTowerDataModule, **options) -> TwoTowerModule:
    return TwoTowerModule(build_two_tower(datamodule.prepared.preprocessor, embedding_dim=4, hidden_dims=[8], output_dim=4), partial(torch.optim.AdamW), **options)


def test_compile_switch_keeps_parameter_names():
    datamodule = _datamodule()
    plain, compiled = _module(datamodule), _module(datamodule, compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_step_loss_leaves_the_progress_bar_but_not_the_loggers():
    datamodule = _datamodule()
    shown = {}
    for progress_bar_loss in (True, False):
        trainer = pl.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(_module(datamodule, progress_bar_loss=progress_bar_loss), datamodule=datamodule)
        shown[progress_bar_loss] = set(trainer.progress_bar_metrics)
        assert {"train/loss_step", "train/loss_epoch"} <= set(trainer.callback_metrics)
    assert shown == {True: {"train/loss_step", "train/loss_epoch"}, False: set()}
