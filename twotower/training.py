"""``train(cfg)``: the whole training job from a composed Hydra config, callable without the CLI."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower.impression_metrics import NAMES as IMPRESSION_NAMES
from twotower.module import TwoTowerModule
from twotower.tracking import wandb_offline_unless_logged_in

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, validate each epoch, and test the best checkpoint.

    Returns:
        metrics: every logged ``train/``, ``val/`` and ``test/`` value as floats.
        objects: ``datamodule``, ``module``, ``trainer``, and ``best_checkpoint`` (a path or None).
    """
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # fitted vocabularies size the towers; raises on bad input before any training
    model = instantiate(cfg.model)(preprocessor=datamodule.preprocessor)
    options = {**OmegaConf.to_container(cfg.loss, resolve=True), **OmegaConf.to_container(cfg.module, resolve=True)}
    table_optimizer = instantiate(cfg.table_optimizer) if cfg.get("table_optimizer") else None
    module = TwoTowerModule(model=model, optimizer=instantiate(cfg.optimizer), table_optimizer=table_optimizer, **options)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if any("Wandb" in str(c.get("_target_", "")) for c in (cfg.get("logger") or {}).values()):
        wandb_offline_unless_logged_in()
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(cfg))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    _report(metrics, cfg.module.ks)
    return metrics, {"datamodule": datamodule, "module": module, "trainer": trainer, "best_checkpoint": best or None}


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
    newest = max(found, key=lambda p: p.stat().st_mtime)
    log.info("resuming from %s", newest)
    return str(newest)


@rank_zero_only
def _report(metrics: dict[str, float], ks: list[int]) -> None:
    """One small table of validation and test metrics on stdout."""
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
    for split in ("val", "test"):  # MIND's impression metrics, where the data has impressions
        values = {n.removeprefix("impression_"): metrics[f"{split}/{n}"] for n in IMPRESSION_NAMES if f"{split}/{n}" in metrics}
        if values:
            print(f"{split:5s} impressions  " + "  ".join(f"{n}={v:.4f}" for n, v in values.items()))
