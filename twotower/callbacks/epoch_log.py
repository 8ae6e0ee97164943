"""``EpochLog``: batch jobs' progress, one plain log line per epoch (and every N steps) instead of a progress bar."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class EpochLog(pl.Callback):
    """One log line per epoch when the progress bar is off (by default whenever stdout is not a terminal:
    a batch job's log, a SLURM ``.out``; or ``trainer.enable_progress_bar=false``).

    ``epoch 3/10  train/loss 4.1830  val/recall@20 0.3012  val/ndcg@10 0.3311  31,240 samples/s  elapsed 41.2s``:
    what a batch job's log needs, without a progress bar's carriage returns. Throughput counts the
    epoch's training pairs over its training time (validation excluded). Silent while a bar is shown.

    With ``every_n_steps``, long epochs also get a line every N training steps, with the mean loss and
    the throughput since the previous line:
    ``epoch 3/10  step 2000/7030  train/loss 4.2231  30,912 samples/s  elapsed 65.0s``.

    Args:
        metrics: logged names to print; ``train/loss`` prints the epoch mean of a per-step value.
        every_n_steps: steps between the lines within an epoch; None for epoch lines only.
    """

    def __init__(self, metrics: Sequence[str] = ("train/loss", "val/recall@20", "val/ndcg@10"), every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"EpochLog every_n_steps={every_n_steps} must be a positive number of steps, or null")
        self.metrics = list(metrics)
        self.every_n_steps = every_n_steps
        self._start = self._epoch_start = self._last_step = time.perf_counter()
        self._samples = 0
        self._since_line = _Window(self._start)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._samples = time.perf_counter(), 0
        self._since_line = _Window(self._epoch_start)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += len(batch)
        self._last_step = time.perf_counter()  # no device sync: the next step's wait moves into the last one's time
        if self.every_n_steps is None or trainer.progress_bar_callback is not None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._since_line.add(len(batch), loss)
        if (batch_idx + 1) % self.every_n_steps == 0 and trainer.is_global_zero:
            log.info(self.step_line(trainer, batch_idx + 1))
            self._since_line = _Window(self._last_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.progress_bar_callback is None and trainer.is_global_zero:
            log.info(self.line(trainer))

    def line(self, trainer: pl.Trainer) -> str:
        found = trainer.callback_metrics
        parts = [_epoch(trainer)]
        for name in self.metrics:
            value = found.get(f"{name}_epoch", found.get(name))
            if value is not None:
                parts.append(f"{name} {float(value):.4f}")
        training = self._last_step - self._epoch_start
        if self._samples and training > 0:
            parts.append(f"{self._samples / training:,.0f} samples/s")
        parts.append(f"elapsed {time.perf_counter() - self._start:.1f}s")
        return "  ".join(parts)

    def step_line(self, trainer: pl.Trainer, step: int) -> str:
        """The line after ``step`` training steps of the current epoch: mean loss and samples/s since the previous line."""
        window = self._since_line
        steps = f"step {step}/{trainer.num_training_batches}" if trainer.num_training_batches != float("inf") else f"step {step}"
        parts = [_epoch(trainer), steps]
        if window.steps:
            parts.append(f"train/loss {float(window.loss_sum) / window.steps:.4f}")  # the one device sync per line
        took = self._last_step - window.start
        if window.samples and took > 0:
            parts.append(f"{window.samples / took:,.0f} samples/s")
        parts.append(f"elapsed {time.perf_counter() - self._start:.1f}s")
        return "  ".join(parts)


def _epoch(trainer: pl.Trainer) -> str:
    """``epoch 3/10``, or ``epoch 3`` when training has no epoch limit."""
    limit = trainer.max_epochs
    return f"epoch {trainer.current_epoch + 1}/{limit}" if limit and limit > 0 else f"epoch {trainer.current_epoch + 1}"


class _Window:
    """Training steps since the last line: their count, samples and summed loss (a device tensor, read once per line)."""

    def __init__(self, start: float):
        self.start, self.steps, self.samples, self.loss_sum = start, 0, 0, 0.0

    def add(self, samples: int, loss: Any) -> None:
        self.steps += 1
        self.samples += samples
        if loss is not None:
            self.loss_sum = self.loss_sum + loss.detach()
