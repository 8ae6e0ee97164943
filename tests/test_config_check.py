"""A composed config is checked against what reads it: unknown keys and wrongly typed values are refused by name."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF
from twotower.config_check import ConfigError, ExportConfig, TrainConfig, check_config, conforms
from twotower.training import train

TABLE_PATHS = {
    "tables": ["data.source.interactions=x.csv"],
    "shards": ["data.source.interactions=x", "data.source.users=u.csv", "data.source.items=i.csv"],
}


def every_option() -> list[str]:
    """group=option for every option of every group train.yaml composes."""
    groups = ["data", "data/split", "model", "loss", "trainer", "logger", "callbacks", "table_optimizer", "protocol", "experiment", "hparams_search"]
    return [f"{group}={path.stem}" for group in groups for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("option", every_option())
def test_every_shipped_option_passes_the_check(compose_cfg, option):
    paths = TABLE_PATHS.get(option.removeprefix("data="), [])
    check_config(compose_cfg(option, *paths), TrainConfig)


@pytest.mark.parametrize("index", sorted(p.stem for p in (CONF / "index").glob("*.yaml")))
def test_every_index_option_passes_the_export_check(index):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("export", overrides=[f"index={index}", "checkpoint=run", "output_dir=art"])
    check_config(cfg, ExportConfig)


@pytest.mark.parametrize(
    "override, named",
    [
        ("+modle.output_dim=8", r"modle: unknown key \(did you mean .*'model'"),
        ("+model.ouput_dim=8", r"model.ouput_dim: build_two_tower takes no argument 'ouput_dim' \(did you mean 'output_dim'\?\)"),
        ("loss.temperature=abc", r"loss.temperature='abc': expected float"),
        ("+loss.temprature=0.1", r"loss.temprature: TwoTowerModule takes no argument 'temprature' \(did you mean 'temperature'"),
        ("module.ks=10", r"module.ks=10: expected Sequence"),
        ("data.batch_size=1.5", r"data.batch_size=1.5: expected int"),
        ("+data.source.bogus=1", r"data.source.bogus: MovieLens100K takes no argument 'bogus'"),
        ("monitor.mode=maxx", r"monitor.mode='maxx': expected one of 'min', 'max'"),
        ("trainer.max_epochs=ten", r"trainer.max_epochs='ten': expected int or null"),
        ("callbacks.early_stopping.patience=soon", r"callbacks.early_stopping.patience='soon': expected int"),
        ("data.split._target_=twotower.data.splits.NoSuchSplit", r"data.split._target_='twotower.data.splits.NoSuchSplit' cannot be imported"),
        ("seed=x", r"seed='x': expected int"),
    ],
)
def test_a_setting_that_would_not_apply_is_refused_by_name(compose_cfg, override, named):
    with pytest.raises(ConfigError, match=named):
        check_config(compose_cfg(override), TrainConfig)


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.output_dim=0", r"model.output_dim=0: must be at least 1"),
        ("model.hidden_dims=[64,0]", r"model.hidden_dims=\[64, 0\]: must be at least 1"),
        ("model.dropout=1.0", r"model.dropout=1.0: must be in \[0, 1\)"),
        ("loss.temperature=0", r"loss.temperature=0: must be greater than 0"),
        ("loss.logq_weight=-1", r"loss.logq_weight=-1: must be at least 0"),
        ("module.ks=[0,10]", r"module.ks=\[0, 10\]: must be at least 1"),
        ("data.batch_size=1", r"data.batch_size=1: must be at least 2"),
        ("data.id_dropout=1.5", r"data.id_dropout=1.5: must be in \[0, 1\)"),
        ("optimizer.lr=0", r"optimizer.lr=0: must be greater than 0"),
        ("optimizer.weight_decay=-0.1", r"optimizer.weight_decay=-0.1: must be at least 0"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0: must be -1 \(no limit\) or at least 1"),
        ("seed=-1", r"seed=-1: must be in \[0, 2\*\*32\)"),
        ("callbacks.early_stopping.patience=-1", r"callbacks.early_stopping.patience=-1: must be at least 0"),
        ("data=synthetic data.source.n_users=0", r"data.source.n_users=0: must be at least 1"),
    ],
)
def test_a_degenerate_size_or_rate_is_refused_by_name(compose_cfg, override, named):
    with pytest.raises(ConfigError, match=named):
        check_config(compose_cfg(*override.split()), TrainConfig)


def test_the_edges_of_each_range_are_accepted(compose_cfg):
    check_config(compose_cfg("model.output_dim=1", "model.hidden_dims=[]", "model.dropout=0.0", "loss.logq_weight=0", "data.batch_size=2",
                             "trainer.max_epochs=-1", "+trainer.min_epochs=0", "seed=0", "callbacks.early_stopping.patience=0"), TrainConfig)
    check_config(compose_cfg("seed=4294967295", "data=synthetic", "data.source.n_users=1"), TrainConfig)


def test_every_problem_is_listed_at_once(compose_cfg):
    with pytest.raises(ConfigError, match=r"has 3 problem\(s\)") as refused:
        check_config(compose_cfg("+modle.output_dim=8", "loss.temperature=abc", "data.batch_size=x"), TrainConfig)
    assert all(key in str(refused.value) for key in ("modle", "loss.temperature", "data.batch_size"))


def test_settings_that_reach_their_receiver_are_accepted(compose_cfg):
    check_config(compose_cfg("trainer.enable_progress_bar=false", "+trainer.limit_train_batches=0.5", "loss.temperature=1",
                             "optimizer.lr=1e-3", "data.split=temporal", "ckpt_path=null", "+model.query_hidden_dims=[32]"), TrainConfig)


def test_train_refuses_before_any_work(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="loss.temperature"):
        train(compose_cfg("data=synthetic", "logger=none", "loss.temperature=abc"))
    assert list(tmp_path.iterdir()) == [], "nothing is written before the config is checked"


def test_export_names_its_missing_mandatory_values():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("export")
    with pytest.raises(ConfigError, match=r"checkpoint is required: set checkpoint=\.\.\.(.|\n)*output_dir is required"):
        check_config(cfg, ExportConfig)


def test_a_plain_mapping_is_checked_too():
    with pytest.raises(ConfigError, match="chunk_size='big'"):
        check_config(OmegaConf.create({"checkpoint": "c", "output_dir": "o", "chunk_size": "big"}), ExportConfig)


@pytest.mark.parametrize(
    "value, hint, expected",
    [
        (3, float, True), (True, int, False), (3.5, int, False), (None, Optional[int], True), ("3", Optional[int], False),
        ([1, 2], Sequence[int], True), ("12", Sequence[int], False), ([1, "x"], list[int], False),
        ("max", Literal["min", "max"], True), ("up", Literal["min", "max"], False),
        ({"a": 1}, dict[str, int], True), ({"a": "b"}, dict[str, int], False),
        ("cpu", OmegaConf, False), ({"_target_": "x.Y"}, OmegaConf, True),
    ],
)
def test_conforms(value, hint, expected):
    assert conforms(value, hint) is expected


def test_an_annotation_it_cannot_judge_never_refuses():
    class Anything:
        pass

    assert conforms("x", "SomeForwardReference") is None
    assert conforms({"k": 1}, Anything) is False and conforms({"_target_": "m.Anything"}, Anything) is True
