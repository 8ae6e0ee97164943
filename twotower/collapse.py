"""Stopping a run whose towers collapsed or do not learn, naming why, instead of ending with exit status 0.

Two signals: every item encoded to (nearly) the same vector (a learning rate far too high,
``optimizer.lr=1e6``, drives the L2-normalised item vectors to all point one way; the loss stays
finite, about log(batch size), and every user gets the same scores), and a training loss that does
not fall (a learning rate far too low, or frozen towers: the run would train for hours to a random model).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn


class CollapsedModelError(RuntimeError):
    """The candidate tower gives every item (nearly) the same vector; the message names the epoch and the spread."""


class StopOnCollapse(Callback):
    """Raises ``CollapsedModelError`` at a training validation whose catalogue vectors have collapsed.

    The spread is the largest distance of an item vector from the catalogue's mean vector (unit
    vectors: 0 when all are equal, up to 2). Read once per validation, from the vectors the
    evaluation encodes anyway: one host sync per epoch.

    Args:
        min_spread: below this the catalogue counts as collapsed. A freshly initialised tower is far
            above it (random directions); so is any tower that ranks at all.
    """

    def __init__(self, min_spread: float = 1e-3, loss_patience: int = 3, min_loss_drop: float = 0.01):
        if loss_patience < 1 or not 0 <= min_loss_drop < 1:
            raise ValueError(f"loss_patience={loss_patience} must be >= 1 and min_loss_drop={min_loss_drop} in [0, 1)")
        self.min_spread, self.loss_patience, self.min_loss_drop = min_spread, loss_patience, min_loss_drop
        self._first_loss: float | None = None  # the first epoch this process trained (a resumed run counts from its own)
        self._first_epoch = 0
        self._best_loss = float("inf")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raises ``CollapsedModelError`` when ``loss_patience`` epochs after the first have not brought the epoch's
        mean training loss ``min_loss_drop`` (a share) below the first epoch's: the towers are not learning."""
        loss = trainer.callback_metrics.get("train/loss_epoch")
        if loss is None:
            return
        loss = float(loss)  # one host sync per epoch
        if self._first_loss is None:
            self._first_loss, self._first_epoch = loss, trainer.current_epoch
            return
        self._best_loss = min(self._best_loss, loss)
        epochs_since_first = trainer.current_epoch - self._first_epoch
        if epochs_since_first >= self.loss_patience and self._best_loss > self._first_loss * (1 - self.min_loss_drop):
            raise CollapsedModelError(
                f"the model is not learning: {epochs_since_first} epochs after the first, the mean training loss is still "
                f"{self._best_loss:.4f} at best, against {self._first_loss:.4f} in the first (less than {self.min_loss_drop:.0%} lower). "
                f"Usual cause: a learning rate far too low (optimizer.lr={getattr(pl_module.optimizer_factory, 'keywords', {}).get('lr', '?')}) "
                "or towers that cannot change (frozen or zero-width layers)."
            )

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        vectors = pl_module.catalogue_vectors  # (n_items, D), encoded at the start of this validation
        spread = float((vectors - vectors.mean(0)).norm(dim=1).max())
        if spread < self.min_spread:
            raise CollapsedModelError(
                f"the model collapsed by epoch {trainer.current_epoch + 1}: every item's vector is within {spread:.2e} of the "
                f"catalogue mean (below {self.min_spread:g}), so every user gets the same ranking. Usual cause: a learning "
                f"rate far too high (optimizer.lr={getattr(pl_module.optimizer_factory, 'keywords', {}).get('lr', '?')}) or a temperature far too low."
            )
