"""What a training run leaves behind besides checkpoints: plots, sample recommendations, CSV and
TensorBoard logs with the resolved config, and a quiet one-line-per-epoch log."""
import logging
import re

import matplotlib.image
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import CONF
from twotower.training import train

EPOCHS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quiet 2-epoch synthetic run with the default callbacks and both CSV and TensorBoard loggers."""
    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[
            f"paths.output_dir={out}", "data=synthetic", "logger=tensorboard", f"trainer.max_epochs={EPOCHS}",
            "trainer.enable_progress_bar=false", "callbacks.early_stopping.patience=10",
        ])
    with open_dict(cfg.logger):
        cfg.logger.csv = OmegaConf.load(CONF / "logger" / "csv.yaml").csv
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("twotower.callbacks.epoch_log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        metrics, objects = train(cfg)
    finally:
        logger.removeHandler(handler)
    return {"dir": out, "metrics": metrics, "datamodule": objects["datamodule"], "lines": lines}


def test_plots_are_written_into_the_run_directory(run):
    for name, size in (("learning_curves.png", (504, 1320)), ("metrics_at_k.png", (504, 1248))):
        assert matplotlib.image.imread(run["dir"] / "plots" / name).shape[:2] == size


def test_sample_recommendations_are_unseen_items_with_titles(run):
    table = pd.read_csv(run["dir"] / "sample_recommendations.csv", dtype={"user_id": str, "item_id": str})
    dm = run["datamodule"]
    users = dm.prepared.eval_users["val"][:5]
    assert table["user_id"].drop_duplicates().tolist() == [dm.prepared.user_rows[u] for u in users.tolist()]
    assert table.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 11))).all()
    assert (table.groupby("user_id")["score"].diff().dropna() <= 0).all()
    item_row = {item: row for row, item in enumerate(dm.prepared.item_rows)}
    positions, known_rows = dm.prepared.known["val"].gather(users.to(dm.prepared.known["val"].indptr.device))
    known = {(dm.prepared.user_rows[users[p].item()], r) for p, r in zip(positions.tolist(), known_rows.tolist())}
    positions, heldout_rows = dm.prepared.heldout["val"].gather(users.to(dm.prepared.heldout["val"].indptr.device))
    heldout = {(dm.prepared.user_rows[users[p].item()], r) for p, r in zip(positions.tolist(), heldout_rows.tolist())}
    pairs = [(user, item_row[item]) for user, item in zip(table["user_id"], table["item_id"])]
    assert not known & set(pairs)
    assert table["held_out"].tolist() == [pair in heldout for pair in pairs]
    titles = dm.prepared.tables.items.set_index("item_id")["title"]
    assert table["title"].tolist() == titles.loc[table["item_id"]].tolist()


def test_csv_log_holds_every_epoch_and_the_resolved_config(run):
    metrics = pd.read_csv(run["dir"] / "csv" / "metrics.csv")
    assert metrics["val/recall@20"].dropna().size == EPOCHS
    assert metrics["val/recall@20"].dropna().iloc[-1] == pytest.approx(run["metrics"]["val/recall@20"], abs=1e-6)
    hparams = OmegaConf.load(run["dir"] / "csv" / "hparams.yaml")
    assert hparams.data.source._target_ == "twotower.data.sources.SyntheticSource"
    assert hparams.trainer.max_epochs == EPOCHS


def test_tensorboard_log_holds_metrics_and_plots(run):
    events = EventAccumulator(str(run["dir"] / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert len(events.Scalars("val/recall@20")) == EPOCHS
    assert events.Scalars("test/recall@20")[0].value == pytest.approx(run["metrics"]["test/recall@20"], abs=1e-6)
    assert {"plots/learning_curves", "plots/metrics_at_k"} <= set(events.Tags()["images"])
    # The HParams tab's metric is the run's best monitored value, not Lightning's placeholder -1.
    assert [e.value for e in events.Scalars("hp_metric")] == [pytest.approx(run["metrics"]["val/recall@20"], abs=1e-6)]


def test_quiet_mode_logs_one_line_per_epoch(run):
    number = r"\d+\.\d{4}"
    pattern = rf"epoch (\d)/{EPOCHS}  train/loss {number}  val/recall@20 {number}  val/ndcg@10 {number}  [\d,]+ samples/s  elapsed \d+\.\ds"
    epochs = [re.fullmatch(pattern, line) for line in run["lines"]]
    assert all(epochs) and [int(m.group(1)) for m in epochs] == list(range(1, EPOCHS + 1)), run["lines"]
    assert f"val/recall@20 {run['metrics']['val/recall@20']:.4f}" in run["lines"][-1]
