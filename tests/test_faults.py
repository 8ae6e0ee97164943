"""Training faults: a NaN loss stops the run and keeps the last good checkpoint; SIGKILL during a
checkpoint write never leaves a checkpoint that loads as complete; a crashed run resumes."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from twotower.checkpoint_io import PARTIAL_SUFFIX, AtomicCheckpointIO
from twotower.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from twotower.training import train

ROOT = Path(__file__).resolve().parents[1]


class PoisonWeightsAt(pl.Callback):
    """The fault: at one global step a weight turns NaN, as after an overflowing update."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_the_run_keeps_the_last_good_checkpoint_and_resume_continues(compose_cfg, fast_synthetic, tmp_path):
    cfg = compose_cfg(*fast_synthetic, "trainer.max_epochs=2", "test=false", "data.source.n_users=200")
    steps_per_epoch = 10  # 200 users x 20 interactions, ~72% train, batches of 256
    with open_dict(cfg):
        cfg.callbacks.poison = {"_target_": "tests.test_faults.PoisonWeightsAt", "step": steps_per_epoch + 5}
    with pytest.raises(NonFiniteLossError, match=rf"training loss is nan at step {steps_per_epoch + 5} \(epoch 1\).*Last good checkpoint: .*last\.ckpt"):
        train(cfg)
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert {"epoch000.ckpt", "last.ckpt"} <= {c.name for c in checkpoints}
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert (state["epoch"], state["global_step"]) == (0, steps_per_epoch)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())

    # The crashed run resumes from its last checkpoint and trains to the end.
    with open_dict(cfg):
        del cfg.callbacks.poison
    cfg.ckpt_path = str(tmp_path / "checkpoints" / "last.ckpt")
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2 * steps_per_epoch
    assert 0.0 < metrics["val/recall@20"] <= 1.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_non_finite_loss_is_named(value):
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    guard = StopOnNonFiniteLoss()
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.5)}, None, 0)
    with pytest.raises(NonFiniteLossError, match=rf"training loss is {value} at step 0 \(epoch 0\).*Last good checkpoint: none yet"):
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(value)}, None, 1)


def test_a_late_check_still_names_the_first_bad_step_and_blocks_checkpoints():
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    guard = StopOnNonFiniteLoss(check_every_n_steps=100)
    for batch_idx, loss in enumerate([1.0, math.inf, math.nan, 2.0]):
        guard.on_train_batch_end(trainer, None, torch.tensor(loss), None, batch_idx)  # recorded, not yet read
    with pytest.raises(NonFiniteLossError, match="training loss is inf"):
        guard.on_save_checkpoint(trainer, None, {})


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from twotower.checkpoint_io import AtomicCheckpointIO
    path = Path(sys.argv[1])
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 1, "weights": torch.zeros(1000)}, path)
    print("first written", flush=True)
    # Big enough that the kill lands while it is being written.
    io.save_checkpoint({"version": 2, "weights": torch.ones(80_000_000 // 4)}, path)
    print("second written", flush=True)
""")


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert writer.stdout.readline().strip() == "first written"
        partial = path.with_name(f"last.ckpt.{writer.pid}{PARTIAL_SUFFIX}")
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.001)
        assert partial.exists(), "the second write never started"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert partial.stat().st_size < 80_000_000, "the kill came too late to interrupt the write"
    # The partial file is what was interrupted; the checkpoint path still holds the complete first version.
    state = torch.load(path, weights_only=True)
    assert state["version"] == 1 and state["weights"].shape == (1000,)


def test_interrupted_write_in_process_leaves_no_partial_file(tmp_path):
    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"version": 1}, path)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        AtomicCheckpointIO().save_checkpoint({"version": 2, "bad": Unsaveable()}, path)
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_trainer_configs_write_checkpoints_atomically(compose_cfg, fast_synthetic):
    for trainer in ("cpu", "gpu", "ddp", "ddp_cpu"):
        cfg = compose_cfg(f"trainer={trainer}")
        assert [p["_target_"] for p in cfg.trainer.plugins] == ["twotower.checkpoint_io.AtomicCheckpointIO"]
    trainer = instantiate(compose_cfg(*fast_synthetic).trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
