"""``RunPlots``: PNG learning curves and Recall/NDCG@K of every training run, in its run directory."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from twotower.plots import plot_learning_curves, plot_metrics_at_k
from twotower.tracking import log_images

LEARNING_CURVES = "learning_curves.png"
METRICS_AT_K = "metrics_at_k.png"


class RunPlots(pl.Callback):
    """Records each epoch's training loss and each validation's metrics; draws them at the end.

    At the end of ``fit`` it writes ``learning_curves.png`` and ``metrics_at_k.png`` (validation at
    the best epoch); at the end of ``test`` it redraws ``metrics_at_k.png`` with the test split.
    The images also go to every logger that takes images (W&B, TensorBoard).

    Args:
        dirpath: where the PNGs go (the run directory's ``plots/``).
        curves: validation metrics drawn against epochs.
        at_k: metric names drawn against K.
        loss: the training loss's logged name.
    """

    def __init__(self, dirpath: str | Path, curves: Sequence[str] = ("val/recall@20", "val/ndcg@10"), at_k: Sequence[str] = ("recall", "ndcg"), loss: str = "train/loss"):
        self.dirpath, self.curves, self.at_k, self.loss = Path(dirpath), list(curves), list(at_k), loss
        self.train: list[dict[str, float]] = []
        self.val: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        # A resumed run keeps the curves of the epochs before the interruption.
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train, self.val = state_dict["train"], state_dict["val"]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch means are in callback_metrics by now, under "<name>_epoch" when also logged per step.
        metrics = trainer.callback_metrics
        value = metrics.get(f"{self.loss}_epoch", metrics.get(self.loss))
        if value is not None:
            self.train.append({"epoch": trainer.current_epoch + 1, self.loss: float(value)})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only training's validations are curves; train.py's closing validation of the best checkpoint is not.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # Fractional epochs when validation runs within an epoch (val_check_interval < 1).
        steps_per_epoch = max(1.0, trainer.num_training_batches / trainer.accumulate_grad_batches)
        row = {"epoch": round(trainer.global_step / steps_per_epoch, 3)}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.val.append(row)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        best = self._best_validation(trainer)
        images = {"learning_curves": plot_learning_curves(self.train, self.val, self.dirpath / LEARNING_CURVES, self.curves, self.loss, best["epoch"] if best else None)}
        if best:
            images["metrics_at_k"] = plot_metrics_at_k({f"val (epoch {best['epoch']:g})": _unprefixed(best, "val/")}, self.dirpath / METRICS_AT_K, self.at_k)
        log_images(trainer.loggers, {f"plots/{name}": figure for name, figure in images.items()})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        series = {}
        best = self._best_validation(trainer)
        if best:
            series[f"val (epoch {best['epoch']:g})"] = _unprefixed(best, "val/")
        series["test"] = _unprefixed({k: float(v) for k, v in trainer.callback_metrics.items()}, "test/")
        figure = plot_metrics_at_k(series, self.dirpath / METRICS_AT_K, self.at_k)
        log_images(trainer.loggers, {"plots/metrics_at_k": figure})

    def _best_validation(self, trainer: pl.Trainer) -> dict[str, float] | None:
        """The validation the checkpoint callback selected (by its monitor), else the last one."""
        if not self.val:
            return None
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        rows = [row for row in self.val if monitor in row]
        if not rows:
            return self.val[-1]
        choose = max if getattr(checkpoint, "mode", "max") == "max" else min
        return choose(rows, key=lambda row: row[monitor])


def _unprefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
