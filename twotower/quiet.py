"""Quiet by default: third-party messages that tell a twotower user nothing, silenced at their source.

Each entry says why it is noise here. Warnings that are not listed, and every error, still show;
``verbose=true`` (or ``-v`` on the command line) leaves all of them on.
"""
from __future__ import annotations

import logging
import os
import warnings

# Loggers whose INFO lines restate what twotower prints itself ("Seed set to 42", "Restoring states
# from the checkpoint path", "GPU available: False"), describe Lightning's internals ("Loading
# `train_dataloader` to estimate number of stepping batches") or advertise ("Tip: ... litlogger").
# Their warnings still show.
CHATTY_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
    "lightning_fabric.utilities.distributed",
)

# (message pattern, why it does not apply to a twotower run)
IRRELEVANT_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning's own call into torch's pytree API; nothing a user or twotower calls"),
    (r"The `srun` command is available on your system but is not used",
     "printed on any machine with SLURM's tools, e.g. a login node; cluster runs go through the submitit launcher"),
    (r"The number of training batches \(\d+\) is smaller than the logging interval",
     "about per-step logging on small data; the epoch's metrics are logged regardless"),
    (r"It is recommended to use `self.log\('train/(loss|temperature)', \.\.\., sync_dist=True\)`",
     "under DDP the training loss is rank 0's on purpose: averaging it over ranks would add an all-reduce (a host sync) to every step"),
)


def quiet_third_party(verbose: bool = False) -> None:
    """Silences ``CHATTY_LOGGERS`` below WARNING, the ``IRRELEVANT_WARNINGS`` and wandb's console lines;
    ``verbose`` leaves all on."""
    if verbose:
        return
    # wandb prints ~40 lines per run (its version, the run's history and summary as sparklines, a
    # deprecation notice about a setting Lightning passes); the metrics are in the run itself, and
    # twotower says where an offline run is kept. WANDB_SILENT=false in the environment keeps them.
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern, _why in IRRELEVANT_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
