"""``logger=wandb`` without credentials: an offline run directory holding config, metrics, plots and samples."""
import json
import os

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF
from tests.wandb_records import finished_records, offline_run
from twotower.exporting import export
from twotower.training import train


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "")  # unset for the code under test; restored afterwards
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_run_and_its_export_are_recorded_offline(compose_cfg, fast_synthetic, no_wandb_credentials, tmp_path):
    overrides = [o for o in fast_synthetic if not o.startswith("logger=")]
    metrics, _ = train(compose_cfg(*overrides, "logger=wandb", "trainer.max_epochs=2"))
    assert os.environ["WANDB_MODE"] == "offline"
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")  # before export adds its own run
    (run_file,) = run_dir.glob("run-*.wandb")
    run = offline_run(run_file)

    assert run["config"]["data"]["source"]["_target_"] == "twotower.data.sources.SyntheticSource"
    assert run["config"]["trainer"]["max_epochs"] == 2
    recalls = [row["val/recall@20"] for row in run["history"] if "val/recall@20" in row]
    assert len(recalls) == 2 and recalls[-1] == pytest.approx(metrics["val/recall@20"], abs=1e-6)
    assert run["summary"]["val/recall@20"] == pytest.approx(metrics["val/recall@20"], abs=1e-6)
    assert run["summary"]["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-6)

    for plot in ("plots/learning_curves", "plots/metrics_at_k"):
        assert run["summary"][f"{plot}/_type"] == "images/separated"
        (image,) = run["summary"][f"{plot}/filenames"]
        assert (run_dir / "files" / image).stat().st_size > 10_000
    table = json.loads((run_dir / "files" / run["summary"]["sample_recommendations/path"]).read_text())
    assert table["columns"] == ["user_id", "rank", "item_id", "score", "held_out", "title", "genres"]
    assert len(table["data"]) == 5 * 10

    # Exporting a checkpoint of a W&B-tracked run records the artifact in that run (resumed by id: lineage), next to the artifact.
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        export_cfg = compose("export", overrides=[f"checkpoint={tmp_path}", f"output_dir={tmp_path / 'artifacts' / 'demo'}"])
    export(export_cfg)
    (export_file,) = (tmp_path / "artifacts" / "wandb").glob("offline-run-*/run-*.wandb")
    assert export_file.name == run_file.name, "the artifact is logged into the training run (the same run id)"
    (record,) = [r.artifact for r in finished_records(export_file) if r.WhichOneof("record_type") == "artifact"]
    assert (record.name, record.type) == ("twotower-demo", "model")
    assert "manifest.json" in {entry.path for entry in record.manifest.contents}
    assert json.loads(record.metadata)["items"] == 300  # the synthetic catalogue

