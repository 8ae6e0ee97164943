"""``EpochLog``: batch jobs' progress, one plain log line per epoch instead of a progress bar."""
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

    Args:
        metrics: logged names to print; ``train/loss`` prints the epoch mean of a per-step value.
    """

    def __init__(self, metrics: Sequence[str] = ("train/loss", "val/recall@20", "val/ndcg@10")):
        self.metrics = list(metrics)
        self._start = self._epoch_start = self._last_step = time.perf_counter()
        self._samples = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += len(batch)
        self._last_step = time.perf_counter()  # no device sync: the next step's wait moves into the last one's time

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.progress_bar_callback is None and trainer.is_global_zero:
            log.info(self.line(trainer))

    def line(self, trainer: pl.Trainer) -> str:
        found = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else f"epoch {trainer.current_epoch + 1}"]
        for name in self.metrics:
            value = found.get(f"{name}_epoch", found.get(name))
            if value is not None:
                parts.append(f"{name} {float(value):.4f}")
        training = self._last_step - self._epoch_start
        if self._samples and training > 0:
            parts.append(f"{self._samples / training:,.0f} samples/s")
        parts.append(f"elapsed {time.perf_counter() - self._start:.1f}s")
        return "  ".join(parts)
