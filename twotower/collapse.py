"""Stopping a run whose towers collapsed: every item encoded to (nearly) the same vector.

A learning rate far too high (``optimizer.lr=1e6``) drives the weights to where the L2-normalised
item vectors all point one way; the loss stays finite (about log(batch size)), every user gets the
same scores, and the run would end with exit status 0 and a useless model.
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

    def __init__(self, min_spread: float = 1e-3):
        self.min_spread = min_spread

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
