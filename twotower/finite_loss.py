"""Stopping a run whose training loss turned NaN or inf, before a checkpoint of the broken weights is written."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class NonFiniteLossError(FloatingPointError):
    """The training loss was NaN or inf; the message names the step and the value."""


class StopOnNonFiniteLoss(Callback):
    """Raises ``NonFiniteLossError`` naming the first step whose loss was not finite.

    Each step records, on the loss's device, whether the loss was finite and the first bad
    step and value; no host sync. The host reads that record every ``check_every_n_steps``
    steps and always before validation and before any checkpoint is written, so a checkpoint
    never holds weights updated by a non-finite loss: the checkpoints on disk are the last good ones.

    Trade-off: reading the record waits for the GPU to finish the step (a host sync). ``1``
    stops at the failing step; larger values let the GPU run ahead and stop up to that many
    steps later, still naming the first bad step. On CPU the check is free. Under DDP each check
    is also one all-reduce of a flag, so every rank stops together. Lightning's
    ``detect_anomaly`` finds the failing op but slows every step; ``EarlyStopping(check_finite=True)``
    only sees the monitored validation metric, after the broken weights were trained on for the epoch.
    """

    def __init__(self, check_every_n_steps: int = 1):
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps={check_every_n_steps} must be >= 1")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad_step: torch.Tensor | None = None  # -1 while every loss was finite
        self._first_bad_loss: torch.Tensor | None = None
        self._first_bad_epoch: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float()
        if self._first_bad_step is None:
            self._first_bad_step = torch.tensor(-1, device=loss.device)
            self._first_bad_loss = torch.tensor(0.0, device=loss.device)
            self._first_bad_epoch = torch.tensor(-1, device=loss.device)
        first = ~torch.isfinite(loss) & (self._first_bad_step < 0)
        # The step that produced this loss: global_step has already counted its optimizer step.
        step = torch.tensor(max(trainer.global_step - 1, 0), device=loss.device)
        self._first_bad_step = torch.where(first, step, self._first_bad_step)
        self._first_bad_loss = torch.where(first, loss, self._first_bad_loss)
        self._first_bad_epoch = torch.where(first, torch.tensor(trainer.current_epoch, device=loss.device), self._first_bad_epoch)
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self._raise_if_seen(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raise_if_seen(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._raise_if_seen(trainer)  # raised while the checkpoint is assembled: nothing is written

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raise_if_seen(trainer)

    def _raise_if_seen(self, trainer: pl.Trainer) -> None:
        seen_here = self._first_bad_step is not None and int(self._first_bad_step) >= 0
        # Every rank checks at the same points; all stop together, or the others would wait forever
        # in their next collective for the rank that stopped.
        if not trainer.strategy.reduce_boolean_decision(seen_here, all=False):
            return
        if not seen_here:
            raise NonFiniteLossError(f"another process saw a non-finite training loss (rank {trainer.global_rank} did not); see its error")
        kept = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        raise NonFiniteLossError(
            f"training loss is {float(self._first_bad_loss)} at step {int(self._first_bad_step)} (epoch {int(self._first_bad_epoch)}); "
            f"training stopped before writing a checkpoint of these weights. Last good checkpoint: {kept or 'none yet'}. "
            "Lower optimizer.lr, enable trainer.gradient_clip_val, or look for extreme feature values."
        )
