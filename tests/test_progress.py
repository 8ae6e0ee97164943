"""Progress display: bars only on a terminal (or when asked), the epoch line only without a bar."""
import logging
import re

import pytest
import pytorch_lightning as pl
import torch

from twotower.callbacks import EpochLog
from twotower.progress import progress


def test_progress_bar_is_off_when_stderr_is_not_a_terminal(capsys):
    assert list(progress(range(3), "encoding catalogue")) == [0, 1, 2]  # pytest's captured stderr is no tty
    assert capsys.readouterr().err == ""


def test_progress_bar_can_be_forced_on(capsys):
    assert list(progress(range(3), "building index", unit="items", enabled=True)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "building index: 100%" in err and "3/3" in err


def test_epoch_line_is_silent_while_a_progress_bar_is_shown(caplog):
    trainer = pl.Trainer(enable_progress_bar=True, logger=False, enable_checkpointing=False, max_epochs=3)
    with caplog.at_level(logging.INFO, logger="twotower.callbacks.epoch_log"):
        EpochLog().on_train_epoch_end(trainer, None)
    assert [r for r in caplog.records if r.name == "twotower.callbacks.epoch_log"] == []


def test_epoch_line_shows_the_metrics_it_finds():
    trainer = pl.Trainer(enable_progress_bar=False, logger=False, enable_checkpointing=False, max_epochs=3)
    trainer.callback_metrics.update({"train/loss_epoch": 4.12345, "train/loss_step": 9.0, "val/recall@20": 0.25})
    line = EpochLog(["train/loss", "val/recall@20", "val/ndcg@10"]).line(trainer)
    assert line.startswith("epoch 1/3  train/loss 4.1235  val/recall@20 0.2500  elapsed ")


def test_step_lines_every_n_steps_carry_the_mean_loss_since_the_previous_line(caplog):
    trainer = pl.Trainer(enable_progress_bar=False, logger=False, enable_checkpointing=False, max_epochs=3)
    callback = EpochLog(every_n_steps=2)
    callback.on_train_epoch_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="twotower.callbacks.epoch_log"):
        for step, loss in enumerate([1.0, 2.0, 3.0, 5.0, 7.0]):
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, torch.zeros(8), step)
    lines = [r.getMessage() for r in caplog.records if r.name == "twotower.callbacks.epoch_log"]
    assert len(lines) == 2  # after steps 2 and 4, not 5
    assert re.match(r"epoch 1/3  step 2(/\d+)?  train/loss 1\.5000  [\d,]+ samples/s  elapsed ", lines[0]), lines[0]
    assert re.match(r"epoch 1/3  step 4(/\d+)?  train/loss 4\.0000  [\d,]+ samples/s  elapsed ", lines[1]), lines[1]


def test_step_lines_need_a_positive_interval():
    with pytest.raises(ValueError, match="every_n_steps=0 must be a positive number of steps"):
        EpochLog(every_n_steps=0)
