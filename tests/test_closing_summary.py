"""The closing validation and test figures of a run describe one checkpoint: the selected one, not the last epoch."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from twotower.sweep_summary import METRICS_FILE
from twotower.training import train


def test_validation_and_test_rows_are_the_best_checkpoints(compose_cfg, fast_synthetic, tmp_path, capsys):
    # A learning rate that overfits the planted data within a few epochs: the last epoch is not the best.
    cfg = compose_cfg(*fast_synthetic, "logger=csv", "trainer.max_epochs=8", "optimizer.lr=0.1", "module.lr_schedule=constant")
    metrics, objects = train(cfg)
    per_epoch = pd.read_csv(next(tmp_path.glob("**/metrics.csv")))["val/recall@20"].dropna().reset_index(drop=True)
    best = int(per_epoch.idxmax())
    assert per_epoch.iloc[-1] < per_epoch.max(), "the run must end past its best epoch for this test to mean anything"
    assert objects["best_epoch"] == best + 1
    assert objects["best_checkpoint"].endswith(f"epoch{best:03d}.ckpt")
    assert metrics["val/recall@20"] == pytest.approx(per_epoch.max(), abs=1e-6)
    assert len(per_epoch) == 8, "the closing validation is not logged as another epoch"

    printed = capsys.readouterr().out
    assert f"saved after epoch {best + 1} (counting from 1)" in printed
    assert f"val   @20      {per_epoch.max():.4f}" in printed
    assert f"test  @20      {metrics['test/recall@20']:.4f}" in printed

    written = json.loads((tmp_path / METRICS_FILE).read_text())
    assert written["best_epoch"] == best + 1 and written["monitor"] == "val/recall@20"
    assert written["metrics"]["test/recall@20"] == metrics["test/recall@20"]
