"""Sweeps: the objective train.py returns, and hparams_search=ml100k_optuna with a database (a second launch continues the study)."""
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from twotower.cli import train_job

ROOT = Path(__file__).resolve().parents[1]


def sweep(storage: str, sweep_dir: Path, *overrides: str) -> None:
    command = [
        sys.executable, "train.py", "-m", "hparams_search=ml100k_optuna", "data=synthetic", "logger=none", "callbacks=none",
        "trainer.max_epochs=1", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1", f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep_dir}", *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sweep_in_a_database_resumes_its_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep(storage, tmp_path / "first")
    # A seeded sampler replays its proposals from the start: a resumed sweep gets a new sampler seed.
    sweep(storage, tmp_path / "second", "hydra.sweeper.sampler.seed=43")
    study = optuna.load_study(study_name="ml100k_two_tower", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(0.0 < t.value <= 1.0 for t in study.trials)
    assert study.trials[0].params != study.trials[1].params
    assert (tmp_path / "second" / "optimization_results.yaml").exists()


def test_the_sweep_objective_is_the_best_validation_value_not_the_last(compose_cfg, fast_synthetic, tmp_path):
    # A learning rate that overfits the planted data within a few epochs: the last epoch is not the best.
    cfg = compose_cfg(*fast_synthetic, "logger=csv", "trainer.max_epochs=8", "optimizer.lr=0.1", "module.lr_schedule=constant", "test=false")
    objective = train_job(cfg)
    metrics = pd.read_csv(next(tmp_path.glob("**/metrics.csv")))
    per_epoch = metrics["val/recall@20"].dropna()
    assert objective == pytest.approx(per_epoch.max())
    assert per_epoch.iloc[-1] < per_epoch.max()
