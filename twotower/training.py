"""``train(cfg)``: the whole training job from a composed Hydra config, callable without the CLI."""
from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from twotower.baseline_run import evaluate_baseline, is_baseline
from twotower.config_check import ConfigError, TrainConfig, check_config
from twotower.module import TwoTowerModule
from twotower.run_record import RunRecord, data_fingerprint
from twotower.sweep_summary import METRICS_FILE
from twotower.task.impression_metrics import NAMES as IMPRESSION_NAMES
from twotower.task.monitor import monitor_problem
from twotower.tracking import finish_runs, log_best_score, log_config, wandb_offline_unless_logged_in, wandb_run_of

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, validate each epoch, then validate and test the best checkpoint.

    Returns:
        metrics: every logged ``train/``, ``val/`` and ``test/`` value as floats.
        objects: ``datamodule``, ``module``, ``trainer``, ``best_checkpoint`` (a path or None) and
            ``best_epoch`` (the epoch after which it was saved, counting from 1, or None). Where ``model``
            is a baseline (``twotower.baseline_run``), ``baseline`` (fitted for the last evaluated split)
            and None for the module, trainer, checkpoint and epoch.

    Raises:
        ConfigError: before any work, for a key nothing reads or a value of the wrong type or out of range.
        ResumeRefused: when the resumed checkpoint (the run directory's, or ``ckpt_path``'s) was trained with other
            settings or on other data.
    """
    check_config(cfg, TrainConfig)  # before any work: unknown keys, wrong types, values out of range
    problem = monitor_problem(cfg.monitor.metric, _module_setting(cfg, "ks"), _module_setting(cfg, "beyond_accuracy_ks"))
    if problem:
        raise ConfigError(problem)  # before any work too: EarlyStopping would raise it after the first epoch
    problem = _callback_monitor_problem(cfg)
    if problem:
        raise ConfigError(problem)
    run_dir = Path(cfg.paths.output_dir)
    _say(f"run directory: {run_dir.resolve()}")
    resume = _resume_path(cfg)
    if resume:
        log.info("resuming from %s", resume)  # a log record, so train.log has it too
    hydra_dir = _hydra_dir()
    record = RunRecord.of(cfg, hydra_dir)
    recorded, elsewhere = RunRecord.resumed(resume, run_dir) if resume else (None, None)
    if recorded:
        record.refuse_other_config(recorded, run_dir, hydra_dir, elsewhere)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # fitted vocabularies size the towers; raises on bad input before any training
    record.data = data_fingerprint(datamodule)
    if recorded:
        record.refuse_other_data(recorded, run_dir, hydra_dir, elsewhere)
    if rank_zero_only.rank == 0:
        record.save(run_dir)
    model = instantiate(cfg.model)
    if is_baseline(model):  # model=popularity, ease, ...: fitted and scored by the same metric code, no towers to train
        return _run_baseline(cfg, model, datamodule, run_dir)
    model = model(preprocessor=datamodule.prepared.preprocessor)
    options = {**OmegaConf.to_container(cfg.loss, resolve=True), **OmegaConf.to_container(cfg.module, resolve=True)}
    table_optimizer = instantiate(cfg.table_optimizer) if cfg.get("table_optimizer") else None
    module = TwoTowerModule(model=model, optimizer=instantiate(cfg.optimizer), table_optimizer=table_optimizer,
                            monitor=cfg.monitor.metric, monitor_mode=cfg.monitor.mode, **options)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if any("Wandb" in str(c.get("_target_", "")) for c in (cfg.get("logger") or {}).values()):
        wandb_offline_unless_logged_in()
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    # A live bar where someone watches (a terminal), EpochLog's one line per epoch where output goes to a file.
    progress = {"enable_progress_bar": sys.stdout.isatty()} if cfg.trainer.get("enable_progress_bar") is None else {}
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **progress)
    for checkpoint in trainer.checkpoint_callbacks:
        if checkpoint.dirpath is None:
            # Lightning's own (callbacks=none) would write under the first logger's directory (csv/checkpoints),
            # where neither ckpt_path=last nor export looks: the run directory's checkpoints/, as the configured ones.
            checkpoint.dirpath = os.path.realpath(run_dir / "checkpoints")
    log_config(loggers, module.run_config)
    module.wandb_run = wandb_run_of(loggers)

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    best_epoch = None
    if best:
        # The closing validation and test figures both describe the selected checkpoint, not the last epoch.
        metrics.update(_evaluate(trainer.validate, module, datamodule, best, "val/", logged=False))
        best_epoch = module.checkpoint_epoch
    if cfg.test:
        metrics.update(_evaluate(trainer.test, module, datamodule, best or None, "test/", logged=True))
    if cfg.monitor.metric in metrics:
        log_best_score(loggers, module.run_config, cfg.monitor.metric, metrics[cfg.monitor.metric])
    finish_runs(loggers)
    _report(metrics, cfg.module.ks, best, best_epoch)
    _write_metrics(run_dir, metrics, cfg.monitor.metric, best, best_epoch)
    _say(f"run directory: {run_dir.resolve()}")
    return metrics, {"datamodule": datamodule, "module": module, "trainer": trainer, "best_checkpoint": best or None, "best_epoch": best_epoch}


def _run_baseline(cfg: DictConfig, baseline: Any, datamodule: Any, run_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """The trained run's closing steps for a baseline: its ``val/`` (and ``test/``) metrics, reported and written alike."""
    # The module's cut-offs, its own default where the config leaves beyond_accuracy_ks unset.
    beyond_ks = cfg.module.get("beyond_accuracy_ks", inspect.signature(TwoTowerModule).parameters["beyond_accuracy_ks"].default)
    splits = ["val", "test"] if cfg.test else ["val"]
    metrics = evaluate_baseline(baseline, datamodule, splits, list(cfg.module.ks), list(beyond_ks), cfg.seed)
    _report(metrics, cfg.module.ks, None, None)
    _write_metrics(run_dir, metrics, cfg.monitor.metric, None, None)
    _say(f"run directory: {run_dir.resolve()}")
    return metrics, {"datamodule": datamodule, "baseline": baseline, "module": None, "trainer": None, "best_checkpoint": None, "best_epoch": None}


def _evaluate(run: Any, module: TwoTowerModule, datamodule: Any, checkpoint: str | None, prefix: str, logged: bool) -> dict[str, float]:
    """``trainer.validate`` or ``trainer.test`` of ``checkpoint``; its metrics as floats.

    ``logged=False`` detaches the loggers: validating an epoch the loggers already have would
    write a second row at the last step.
    """
    trainer = module.trainer
    loggers = trainer.loggers
    if not logged:
        trainer.loggers = []
    try:
        run(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    finally:
        trainer.loggers = loggers
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def _hydra_dir() -> Path | None:
    """Where Hydra keeps its copy of the composed config (``<run dir>/.hydra``), under a Hydra app."""
    if not HydraConfig.initialized() or not HydraConfig.get().output_subdir:
        return None
    hydra = HydraConfig.get()
    return Path(hydra.runtime.output_dir) / hydra.output_subdir


@rank_zero_only
def _say(line: str) -> None:
    print(line, flush=True)


@rank_zero_only
def _write_metrics(run_dir: Path, metrics: dict[str, float], monitor: str, best: str | None, best_epoch: int | None) -> None:
    summary = {"monitor": monitor, "best_checkpoint": best, "best_epoch": best_epoch, "metrics": metrics}
    partial = run_dir / f"{METRICS_FILE}.{os.getpid()}.partial"
    partial.write_text(json.dumps(summary, indent=1, sort_keys=True))
    os.replace(partial, run_dir / METRICS_FILE)


def _callback_monitor_problem(cfg: DictConfig) -> str | None:
    """A callback that monitors (checkpoint selection, early stopping) another metric or mode than ``monitor``, which the
    popularity prior's weight, the closing report and a sweep's objective follow: one run would have two notions of best."""
    for name, callback in (cfg.get("callbacks") or {}).items():
        for key, expected in (("monitor", cfg.monitor.metric), ("mode", cfg.monitor.mode)):
            # A resume-point checkpoint monitors nothing (monitor: null), and its mode is then unused.
            if callback.get("monitor") is not None and key in callback and callback[key] != expected:
                return (f"callbacks.{name}.{key}={callback[key]!r} differs from monitor.{'metric' if key == 'monitor' else 'mode'}={expected!r}; "
                        "set monitor.metric / monitor.mode, which every callback and a sweep follow")
    return None


def _module_setting(cfg: DictConfig, name: str) -> Any:
    """``module.<name>`` as the run has it: the config's, else ``TwoTowerModule``'s default."""
    return cfg.module.get(name, inspect.signature(TwoTowerModule).parameters[name].default)


def _resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a path, null (start fresh), or ``last``: the run directory's newest checkpoint.

    Every checkpoint holds the whole training state, so the newest one is where training stopped:
    the step and epoch-end resume points and the best checkpoint in ``checkpoints/``, or
    Lightning's ``hpc_ckpt_<n>.ckpt`` written when SLURM signals a requeue. A restarted or
    requeued job in the same run directory continues; a fresh run directory starts fresh.
    """
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    run_dir = Path(cfg.paths.output_dir)
    found = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    if not found:
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime))


@rank_zero_only
def _report(metrics: dict[str, float], ks: list[int], best: str | None, best_epoch: int | None) -> None:
    """One small table of validation and test metrics on stdout, and the checkpoint they describe."""
    if best:
        print(f"best checkpoint: {best}, saved after epoch {best_epoch} (counting from 1); the rows below are its metrics")
    names = ["recall", "ndcg", "map", "mrr", "precision", "hitrate"]
    rows = []
    for split in ("val", "test"):
        for k in ks:
            values = [metrics.get(f"{split}/{n}@{k}") for n in names]
            if any(v is not None for v in values):
                rows.append(f"{split:5s} @{k:<4d} " + " ".join(f"{v:9.4f}" if v is not None else f"{'-':>9s}" for v in values))
    if rows:
        print("split  k     " + " ".join(f"{n:>9s}" for n in names))
        print("\n".join(rows))
    for split in ("val", "test"):  # impression metrics, where the data records impressions
        values = {n.removeprefix("impression_"): metrics[f"{split}/{n}"] for n in IMPRESSION_NAMES if f"{split}/{n}" in metrics}
        if values:
            print(f"{split:5s} impressions  " + "  ".join(f"{n}={v:.4f}" for n, v in values.items()))
