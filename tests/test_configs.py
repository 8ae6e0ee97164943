"""Every config group composes and instantiates."""

import pytest
import pytorch_lightning as pl
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF
from twotower.baseline_run import is_baseline


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_instantiate(compose_cfg, data, tmp_path):
    paths = {"tables": ["data.source.interactions=x.csv"], "shards": ["data.source.interactions=x", "data.source.users=u.csv", "data.source.items=i.csv"]}
    cfg = compose_cfg(f"data={data}", *paths.get(data, []))
    dm = instantiate(cfg.data)
    assert dm.schema.query and dm.schema.candidate


def tower_options():
    """The model options that build towers (the others are baselines, ``tests/test_baseline_models.py``)."""
    return [o for o in options("model") if OmegaConf.load(CONF / "model" / f"{o}.yaml")["_target_"] == "twotower.model.build_two_tower"]


@pytest.mark.parametrize("model", tower_options())
def test_model_configs_build_towers(compose_cfg, model):
    # model=mind configures a click-history user tower: the history is then read through the item tower.
    through = ["+data.features.query.3.through_item_tower=true"] if model == "mind" else []
    cfg = compose_cfg("data=synthetic", f"model={model}", *through)
    dm = instantiate(cfg.data)
    dm.setup()
    towers = instantiate(cfg.model)(preprocessor=dm.prepared.preprocessor)
    assert towers.query_tower.output_dim == cfg.model.output_dim


@pytest.mark.parametrize("model", sorted(set(options("model")) - set(tower_options())))
def test_baseline_model_configs_build_baselines(compose_cfg, model):
    assert is_baseline(instantiate(compose_cfg(f"model={model}").model))


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_instantiate(compose_cfg, trainer):
    # GPU configs are checked for composition here and built on the CPU (CI has no GPU).
    cfg = compose_cfg(f"trainer={trainer}")
    overrides = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "strategy": "auto"} if cfg.trainer.accelerator != "cpu" else {}
    trainer_cfg = OmegaConf.merge(OmegaConf.to_container(cfg.trainer, resolve=True), overrides)
    assert isinstance(instantiate(trainer_cfg, logger=False), pl.Trainer)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_configs_instantiate(compose_cfg, logger, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg(f"logger={logger}")
    for conf in (cfg.logger or {}).values():
        assert instantiate(conf) is not None


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_configs_instantiate(compose_cfg, callbacks):
    cfg = compose_cfg(f"callbacks={callbacks}")
    for conf in (cfg.callbacks or {}).values():
        assert isinstance(instantiate(conf), pl.Callback)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_configs_compose(compose_cfg, experiment):
    assert compose_cfg(f"experiment={experiment}").data is not None


def test_malformed_override_is_refused(compose_cfg):
    with pytest.raises(OverrideParseException):
        compose_cfg("model.output_dim=[32")
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/transformer'"):
        compose_cfg("model=transformer")
