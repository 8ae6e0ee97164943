"""hparams_search=ml100k_optuna with a database: a second launch continues the same study."""
import subprocess
import sys
from pathlib import Path

import optuna

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
