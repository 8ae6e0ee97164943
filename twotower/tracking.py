"""Experiment tracking: set-up that never blocks a batch job, and what a run records besides metrics."""
from __future__ import annotations

import csv
import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from lightning_fabric.loggers.logger import rank_zero_experiment
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)


def wandb_offline_unless_logged_in() -> None:
    """Sets ``WANDB_MODE=offline`` when no W&B credentials are present.

    Without credentials wandb asks for an API key on a terminal and fails without one; a job on a
    cluster must do neither. The offline run directory can be uploaded later with ``wandb sync``.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        logged_in = netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        log.warning("no W&B credentials (WANDB_API_KEY or ~/.netrc): logging offline into <run dir>/wandb; upload later with `wandb sync <run dir>/wandb/offline-run-*`")
        os.environ["WANDB_MODE"] = "offline"


class AppendingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a run resumed into its own directory appends to ``metrics.csv``.

    Lightning's writer deletes the ``metrics.csv`` of its version when it starts. A run directory
    logs into one version (``conf/logger/csv.yaml``: ``version: ""``), so rerunning the directory to
    resume erased every row of the epochs before the resume point.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning's writer deletes an existing metrics.csv here. Instead its columns become the
        # writer's known columns: save() then appends rows, and rewrites the earlier rows under a
        # wider header when the resumed run logs a new column (e.g. test/ metrics).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


def log_config(loggers: Sequence[Logger], config: Mapping[str, Any]) -> None:
    """The whole resolved run config (data, model, loss, trainer, ...) as every logger's hyperparameters."""
    for logger in loggers:
        logger.log_hyperparams(dict(config))


def log_best_score(loggers: Sequence[Logger], config: Mapping[str, Any], monitor: str, score: float) -> None:
    """The run's hyperparameters with its best ``monitor`` value, for TensorBoard's HParams tab (``hp_metric``),
    so runs compare by what they were selected on; other loggers keep the config ``log_config`` gave them."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(dict(config), metrics={"hp_metric": score})
            logger.experiment.add_text("hp_metric", f"best {monitor}", 0)


def log_images(loggers: Sequence[Logger], figures: Mapping[str, Figure], step: int | None = None) -> None:
    """Figures as images in the loggers that hold images (W&B, TensorBoard); others keep the PNG files only."""
    targets = [logger for logger in loggers if isinstance(logger, (WandbLogger, TensorBoardLogger))]
    if not targets:
        return
    pixels = {key: _rgb(figure) for key, figure in figures.items()}
    for logger in targets:
        for key, image in pixels.items():
            if isinstance(logger, WandbLogger):
                logger.log_image(key, [image], step=step)
            else:
                logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")


def log_table(loggers: Sequence[Logger], key: str, table: pd.DataFrame) -> None:
    """A table (e.g. sample recommendations) in the W&B run; other loggers have no table type."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key, dataframe=table)


def finish_runs(loggers: Sequence[Logger]) -> None:
    """Closes the W&B run, so its files are complete and a next ``train`` in this process starts a new run."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


def wandb_logger_config(run_config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The W&B logger's settings in a training run's resolved config, or None when it used no W&B."""
    for logger in ((run_config or {}).get("logger") or {}).values():
        if "Wandb" in str(logger.get("_target_", "")):
            return logger
    return None


def wandb_run_of(loggers: Sequence[Logger]) -> dict[str, str] | None:
    """The id and project of the W&B run among ``loggers`` (None without one), for export to log into."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return {"id": logger.experiment.id, "project": logger.experiment.project}
    return None


def log_exported_artifact(path: str | Path, project: str = "twotower", save_dir: str | Path | None = None, metadata: Mapping[str, Any] | None = None,
                          run_id: str | None = None) -> None:
    """Records an exported artifact directory as a W&B Artifact (type ``model``).

    Into the training run ``run_id`` when given (resumed, so the artifact's lineage is the run that made
    the checkpoint), else into an ``export`` run of its own. Offline unless credentials are present, like
    training; ``wandb sync`` uploads it later (an offline resume syncs into the same run).

    Args:
        path: the artifact directory (every file is added).
        save_dir: where the run's ``wandb/`` folder goes (default: next to the artifact).
        metadata: shown with the artifact (e.g. the manifest's index key, dims and counts).
        run_id: the W&B run that trained the checkpoint.
    """
    import wandb

    path = Path(path)
    wandb_offline_unless_logged_in()
    where = {"id": run_id, "resume": "allow"} if run_id else {"job_type": "export", "name": f"export-{path.name}"}
    run = wandb.init(project=project, dir=str(save_dir or path.parent), **where)
    try:
        artifact = wandb.Artifact(f"twotower-{path.name}", type="model", metadata=dict(metadata or {}))
        artifact.add_dir(str(path))
        run.log_artifact(artifact)
    finally:
        run.finish()


def _rgb(figure: Figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a figure."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
