"""``EpochLog``: quiet mode for batch jobs, one plain log line per epoch instead of a progress bar."""
from __future__ import annotations

import logging
import time
from typing import Sequence

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class EpochLog(pl.Callback):
    """One log line per epoch when the progress bar is off (``trainer.enable_progress_bar=false``).

    ``epoch 3/10  train/loss 4.1830  val/recall@20 0.3012  val/ndcg@10 0.3311  elapsed 41.2s``: what a
    batch job's log needs, without a progress bar's carriage returns. Silent while a bar is shown.

    Args:
        metrics: logged names to print; ``train/loss`` prints the epoch mean of a per-step value.
    """

    def __init__(self, metrics: Sequence[str] = ("train/loss", "val/recall@20", "val/ndcg@10")):
        self.metrics = list(metrics)
        self._start = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

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
        parts.append(f"elapsed {time.perf_counter() - self._start:.1f}s")
        return "  ".join(parts)
