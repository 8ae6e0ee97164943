"""Console scripts ``twotower-train`` and ``twotower-export``: ``train.py`` and ``export.py``, installed.

Both read the same Hydra configs: ``twotower/conf`` is a link to the repository's ``conf/`` (one
copy), which a wheel ships as package data. Add your own config groups with Hydra's
``--config-dir`` (e.g. ``twotower-train --config-dir my_conf data=mine``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from twotower.extras import MissingExtra, check_choices, choices_in
from twotower.quiet import quiet_third_party

CONF_DIR = str(Path(__file__).parent / "conf")


def train_main() -> None:
    """``twotower-train [-v] [overrides]`` (``python train.py``)."""
    _verbose_flag()
    _exit_on_missing_extra(choices_in(sys.argv[1:]))  # a launcher or sweeper Hydra would fail to load before the job
    train_job()


def export_main() -> None:
    """``twotower-export [-v] checkpoint=<ckpt or run dir> output_dir=<dir> [index=...]`` (``python export.py``)."""
    _verbose_flag()
    export_job()


def _verbose_flag() -> None:
    """``-v`` / ``--verbose`` on the command line is the override ``verbose=true`` (every third-party message shown)."""
    sys.argv[1:] = ["verbose=true" if argument in ("-v", "--verbose") else argument for argument in sys.argv[1:]]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_job(cfg: DictConfig) -> float | None:
    """The Hydra job behind ``twotower-train``: ``twotower.training.train``; returns the monitored metric for sweepers:
    the validation value of the best checkpoint (the one that is tested and exported), else of the last epoch."""
    from twotower.training import train  # imported here so ``--help`` answers without loading torch

    metrics, _ = _run(train, cfg)
    return metrics.get(cfg.monitor.metric)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def export_job(cfg: DictConfig) -> str:
    """The Hydra job behind ``twotower-export``: ``twotower.exporting.export``."""
    from twotower.exporting import export

    path = _run(export, cfg)
    print(f"artifact: {path}")
    return str(path)


def _run(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """A config or resume refusal is the user's to fix, not a bug: its message alone, exit status 1."""
    from twotower.config_check import ConfigError
    from twotower.run_record import ResumeRefused

    quiet_third_party(verbose=bool(cfg.get("verbose", False)))
    if HydraConfig.initialized():
        _exit_on_missing_extra(HydraConfig.get().runtime.choices)  # as composed, experiment files included
    try:
        return job(cfg)
    except (ConfigError, ResumeRefused) as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(1)


def _exit_on_missing_extra(choices: Mapping[str, str | None]) -> None:
    try:
        check_choices(choices)
    except MissingExtra as missing:
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(1)
