"""Resume: a run killed with SIGKILL mid-epoch and started again continues from its last checkpoint."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

# Two training processes, one killed: about a minute; .ci/run runs it.
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
EVERY = 10  # steps between resume points
EPOCHS = 2
DATA = ["data=synthetic", "data.source.n_users=100", "data.batch_size=32"]


def steps_per_epoch() -> int:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        datamodule = instantiate(compose("train", overrides=DATA).data)
    datamodule.setup("fit")
    return len(datamodule.prepared.train_pairs) // datamodule.batch_size


def train_command(run_dir: Path, log_version: str) -> list[str]:
    return [
        sys.executable, "train.py", *DATA, f"hydra.run.dir={run_dir}", "test=false",
        f"trainer.max_epochs={EPOCHS}", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        f"callbacks.step_checkpoint.every_n_train_steps={EVERY}", f"logger.csv.version={log_version}",
    ]  # fmt: skip


def logged_steps(run_dir: Path, log_version: str) -> list[int]:
    """The step of every training loss one run logged."""
    with open(run_dir / "csv" / log_version / "metrics.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]


def test_sigkill_mid_epoch_then_restart_continues_from_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    resume_point = run_dir / "checkpoints" / "resume-step.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    first = subprocess.Popen(train_command(run_dir, "first"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not resume_point.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    stderr = first.communicate()[1]
    assert first.returncode == -signal.SIGKILL, f"training ended before it could be killed:\n{stderr[-3000:]}"
    killed_at = torch.load(resume_point, map_location="cpu", weights_only=False)["global_step"]
    per_epoch = steps_per_epoch()
    assert killed_at > 0 and killed_at % per_epoch != 0, f"checkpoint at step {killed_at} is not mid-epoch ({per_epoch} steps/epoch)"

    second = subprocess.run(train_command(run_dir, "second"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {resume_point}" in second.stdout + second.stderr

    total = EPOCHS * per_epoch
    final = torch.load(run_dir / "checkpoints" / "resume-epoch.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == total
    # The optimizer state came back too: Adam counted every step of both runs, not just the second's.
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {total}
    # The second run trained exactly the steps after the checkpoint: its losses start at that step.
    assert logged_steps(run_dir, "second") == list(range(killed_at, total))
