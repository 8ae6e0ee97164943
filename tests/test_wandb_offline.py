"""``logger=wandb`` without credentials: an offline run directory holding config, metrics, plots and samples."""
import json
import os

import pytest

from tests.wandb_records import offline_run
from twotower.training import train


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "")  # unset for the code under test; restored afterwards
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_run_is_recorded_offline(compose_cfg, fast_synthetic, no_wandb_credentials, tmp_path):
    overrides = [o for o in fast_synthetic if not o.startswith("logger=")]
    metrics, _ = train(compose_cfg(*overrides, "logger=wandb", "trainer.max_epochs=2"))
    assert os.environ["WANDB_MODE"] == "offline"
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    run = offline_run(run_file)

    assert run["config"]["data"]["source"]["_target_"] == "twotower.data.sources.SyntheticSource"
    assert run["config"]["trainer"]["max_epochs"] == 2
    # The per-epoch rows are in the history (wandb-core has once dropped the last epoch's row on a
    # loaded machine, so the count is not pinned); the final values are in the summary.
    assert any("val/recall@20" in row for row in run["history"]) and any("train/loss_epoch" in row for row in run["history"])
    assert run["summary"]["val/recall@20"] == pytest.approx(metrics["val/recall@20"], abs=1e-6)
    assert run["summary"]["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-6)

    for plot in ("plots/learning_curves", "plots/metrics_at_k"):
        assert run["summary"][f"{plot}/_type"] == "images/separated"
        (image,) = run["summary"][f"{plot}/filenames"]
        assert (run_dir / "files" / image).stat().st_size > 10_000
    table = json.loads((run_dir / "files" / run["summary"]["sample_recommendations/path"]).read_text())
    assert table["columns"] == ["user_id", "rank", "item_id", "score", "held_out", "title", "genres"]
    assert len(table["data"]) == 5 * 10
