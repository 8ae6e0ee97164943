"""Config options that need an optional extra: refused up front with the ``pip install`` that brings it.

A plain ``pip install twotower`` holds what training, export and serving need; the TensorBoard
logger, the cluster launchers, the Optuna sweeper and the baseline models come with extras (``pyproject.toml``). Without
them Lightning, or Hydra while it sets up a sweep, fails on a missing import deep in a traceback.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping

# config group -> option -> (the module it imports, the extra that installs it)
NEEDS_EXTRA: dict[str, dict[str, tuple[str, str]]] = {
    "logger": {"tensorboard": ("tensorboard", "tracking")},
    "hydra/launcher": {
        "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
        "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    },
    "hparams_search": {"ml100k_optuna": ("hydra_plugins.hydra_optuna_sweeper", "cluster")},
    # The baselines (twotower.baselines) work on scipy sparse matrices; three fit through implicit (which needs scipy).
    "model": {
        **{option: ("scipy", "bench") for option in ("popularity", "recency_popularity", "trending", "ease", "content_overlap")},
        **{option: ("implicit", "bench") for option in ("itemknn", "als", "bpr")},
    },
}


class MissingExtra(RuntimeError):
    """A chosen config option whose optional dependency is not installed."""


def check_choices(choices: Mapping[str, str | None]) -> None:
    """Raises ``MissingExtra`` naming the option and the install command, for each chosen group option
    (``{"logger": "tensorboard", ...}``, as Hydra's ``runtime.choices``) whose module is not importable."""
    missing = []
    for group, option in choices.items():
        needed = NEEDS_EXTRA.get(group, {}).get(option or "")
        if needed and not _importable(needed[0]):
            missing.append(f"{group}={option} needs {needed[0]}: pip install 'twotower[{needed[1]}]'")
    if missing:
        raise MissingExtra("; ".join(missing))


def choices_in(arguments: Iterable[str]) -> dict[str, str]:
    """The ``group=option`` overrides of a command line (``hydra/launcher=submitit_slurm`` -> its group and option)."""
    chosen = {}
    for argument in arguments:
        key, equals, value = argument.lstrip("+~").partition("=")
        if equals and key in NEEDS_EXTRA:
            chosen[key] = value
    return chosen


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
