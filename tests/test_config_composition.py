"""Every key an experiment, protocol or sweep file sets reaches the composed config unchanged.

A config that composes but silently loses a setting (the base file listed after it in the defaults,
a group selected later putting its own value back) is worse than one that fails: the run reports
figures for settings it did not use. This composes each such file on top of the default config and
compares every leaf the file writes with what the composed config holds.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF

# Groups whose files are packaged `_global_` bundles of settings chosen on the command line.
BUNDLE_GROUPS = ("experiment", "protocol", "hparams_search")


def bundle_files() -> list[Path]:
    return sorted(p for group in BUNDLE_GROUPS for p in (CONF / group).glob("*.yaml"))


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; lists are leaves (a list setting is replaced whole), and so
    are mappings whose keys hold dots (a sweeper's ``params``: {"optimizer.lr": "interval(...)"})."""
    if isinstance(node, dict) and not any("." in str(key) for key in node):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def compose_with(group: str, option: str, *extra: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=[f"{group}={option}", *extra], return_hydra_config=True)


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_key_a_bundle_sets_reaches_the_composed_config(path: Path):
    written = yaml.safe_load(path.read_text()) or {}
    assert path.read_text().lstrip().startswith("# @package _global_"), f"{path} must be a _global_ package"
    written.pop("defaults", None)
    cfg = compose_with(path.parent.name, path.stem)
    composed = OmegaConf.to_container(cfg, resolve=False)
    checked = 0
    for key, value in leaves(written):
        node: Any = composed
        for part in key.split(".") if key else []:
            assert isinstance(node, dict) and part in node, f"{path.name} sets {key}, which the composed config lacks"
            node = node[part]
        if hasattr(node, "name"):  # an enum (hydra.mode: MULTIRUN) compares by its name
            node = node.name
        assert node == value, f"{path.name} sets {key}={value!r}, the composed config has {node!r}"
        checked += 1
    assert checked, f"{path.name} sets no key"


@pytest.mark.parametrize("mode, direction", [("max", "maximize"), ("min", "minimize")])
def test_the_sweep_optimises_the_monitored_metric_in_its_mode(mode, direction):
    """The sweep's objective is monitor.metric: monitor.mode=min (train/loss, val/gini@20) left Optuna maximising it,
    so the study's best trial was the checkpoint selection's worst."""
    cfg = compose_with("hparams_search", "ml100k_optuna", "monitor.metric=train/loss", f"monitor.mode={mode}")
    assert cfg.hydra.sweeper.direction == direction


def test_experiment_wins_over_the_base_file():
    """The regression itself: the base file's optimizer block used to put lr back to 0.003."""
    cfg = compose_with("experiment", "ml100k_best")
    assert cfg.optimizer.lr == pytest.approx(0.00123)
    assert cfg.optimizer.weight_decay == pytest.approx(0.01)


def test_command_line_wins_over_an_experiment():
    cfg = compose_with("experiment", "ml100k_best", "optimizer.lr=0.5", "data/split=temporal")
    assert cfg.optimizer.lr == 0.5
    assert cfg.data.split._target_.endswith("TemporalSplit")


@pytest.mark.parametrize(
    "override, target, absent",
    [
        ("data/split=predefined", "PredefinedSplit", ["test", "val"]),
        ("data/split=leave_last_out", "LeaveLastOut", ["test", "val"]),
        ("data.split=predefined", None, []),  # a split named by a string: built with its defaults
        ("protocol=cold_items", "ColdStartItems", ["reveal"]),
        ("protocol=temporal", "TemporalSplit", []),
    ],
)
def test_a_split_is_one_override(override, target, absent):
    cfg = compose_with("data", "tables", "data.source.interactions=x.csv", override)
    split = cfg.data.split
    if target is None:
        assert split == "predefined"
        return
    assert split._target_.endswith(target)
    for key in absent:
        assert key not in split, f"{override} left {key} from the default split"
    if override == "protocol=cold_items":
        assert cfg.data.candidates == "heldout"


@pytest.mark.parametrize("data", ["movielens", "tables", "synthetic"])
def test_candidates_is_a_key_of_every_in_memory_data_config(data):
    cfg = compose_with("data", data, "data.candidates=heldout", *(["data.source.interactions=x.csv"] if data == "tables" else []))
    assert cfg.data.candidates == "heldout"


def test_a_split_named_by_a_string_is_the_group_options_split():
    from hydra.utils import instantiate

    from twotower.data.splits import SPLITS_BY_NAME, split_by_name

    options = sorted(p.stem for p in (CONF / "data" / "split").glob("*.yaml"))
    assert sorted(SPLITS_BY_NAME) == options
    for name in options:
        built = instantiate(compose_with("data/split", name, "seed=7").data.split)
        by_name = split_by_name(name, seed=7)
        assert type(by_name) is type(built) and vars(by_name) == vars(built), name
    with pytest.raises(ValueError, match="data.split='tempral' is not a split; choose one of random"):
        split_by_name("tempral", seed=0)
