"""A run directory resumes only the run it holds: other settings or other data are refused by name."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import CONF
from twotower.run_record import RECORD, ResumeRefused, RunRecord
from twotower.training import _resume_path, train

ROOT = CONF.parent
FAST = ["logger=none", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "test=false"]


@pytest.fixture
def synthetic_run(compose_cfg, tmp_path):
    """A finished one-epoch run in tmp_path; returns the overrides it was trained with."""
    overrides = ["data=synthetic", "data.source.n_users=150", *FAST]
    train(compose_cfg(*overrides))
    assert (tmp_path / RECORD).exists() and list((tmp_path / "checkpoints").glob("*.ckpt"))
    return overrides


@pytest.mark.parametrize(
    "change, named",
    [
        ("loss.temperature=0.2", r"loss.temperature: 0.05 when the run started, 0.2 now"),
        ("model.output_dim=32", r"model.output_dim: 64 when the run started, 32 now"),
        ("data.source.n_users=120", r"data.source.n_users: 150 when the run started, 120 now"),
        ("+model.query_hidden_dims=[32]", r"model.query_hidden_dims: \(not set\) when the run started, \[32\] now"),
    ],
)
def test_rerunning_with_other_settings_is_refused_naming_them(compose_cfg, synthetic_run, tmp_path, change, named):
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").glob("*.ckpt")}
    with pytest.raises(ResumeRefused, match=named) as refused:
        train(compose_cfg(*synthetic_run, change))
    assert "hydra.run.dir=" in str(refused.value) and "ckpt_path=null" in str(refused.value)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").glob("*.ckpt")} == before


def test_more_epochs_or_another_logger_resume_the_same_run(compose_cfg, synthetic_run):
    _, objects = train(compose_cfg(*synthetic_run, "trainer.max_epochs=2", "logger=csv"))
    assert objects["trainer"].current_epoch == 2 and objects["best_epoch"] in (1, 2)


def test_a_new_early_stopping_patience_applies_to_the_resumed_run(compose_cfg, synthetic_run):
    """Lightning's EarlyStopping restores the checkpoint's patience with its wait count, so a resume with
    callbacks.early_stopping.patience=9 (callbacks may change on resume) silently kept the first run's 5."""
    _, objects = train(compose_cfg(*synthetic_run, "trainer.max_epochs=2", "callbacks.early_stopping.patience=9"))
    stopping = objects["trainer"].early_stopping_callback
    assert stopping.patience == 9 and objects["trainer"].current_epoch == 2
    assert stopping.state_dict()["patience"] == 9


def test_a_run_without_checkpoint_callbacks_keeps_its_checkpoint_where_resume_and_export_look(compose_cfg, tmp_path):
    """callbacks=none beside a logger: Lightning's own checkpoint went to <run dir>/csv/checkpoints, where neither
    ckpt_path=last nor export looks, so rerunning the line silently started over and export.py checkpoint=<run dir>
    found no checkpoint."""
    from twotower.exporting import find_checkpoint

    overrides = ["data=synthetic", "data.source.n_users=100", "callbacks=none", "logger=csv", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", "test=false"]
    train(compose_cfg(*overrides))
    (written,) = (tmp_path / "checkpoints").glob("*.ckpt")
    assert _resume_path(compose_cfg(*overrides)) == str(written)  # rerunning the line resumes it
    assert find_checkpoint(tmp_path) == written


def test_ckpt_path_null_starts_the_directory_over_with_the_new_settings(compose_cfg, synthetic_run, tmp_path):
    train(compose_cfg(*synthetic_run, "loss.temperature=0.2", "ckpt_path=null"))
    assert RunRecord.load(tmp_path).config["loss"]["temperature"] == 0.2


def test_a_checkpoint_of_another_run_resumes_only_under_its_settings(compose_cfg, synthetic_run, tmp_path):
    """ckpt_path=<file> from another run directory: the optimizer state it restores would override a new learning rate
    (and the towers a new shape), so other settings are refused there too, by that run's record or, for a checkpoint
    copied out alone, by the settings it stores; the same settings resume it."""
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    elsewhere = [f"ckpt_path={checkpoint}", f"paths.output_dir={tmp_path / 'next'}"]
    with pytest.raises(ResumeRefused, match=r"ckpt_path=.*last\.ckpt was trained with other settings(.|\n)*optimizer.lr: 0.003 when the run started, 0.5 now"):
        train(compose_cfg(*synthetic_run, *elsewhere, "optimizer.lr=0.5"))
    alone = tmp_path / "shelf" / "model.ckpt"
    alone.parent.mkdir()
    alone.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ResumeRefused, match=r"model\.ckpt was trained with other settings(.|\n)*model.output_dim: 64 when the run started, 32 now"):
        train(compose_cfg(*synthetic_run, f"ckpt_path={alone}", f"paths.output_dir={tmp_path / 'next'}", "model.output_dim=32"))
    _, objects = train(compose_cfg(*synthetic_run, *elsewhere, "trainer.max_epochs=2"))
    assert objects["trainer"].current_epoch == 2


def test_rerunning_on_changed_tables_is_refused_naming_them(compose_cfg, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [(f"u{u}", f"i{(u * 7 + k) % 40}", 1_700_000_000 + 60 * k) for u in range(60) for k in range(12)]
    pd.DataFrame(rows, columns=["uid", "iid", "ts"]).to_csv(data / "clicks.csv", index=False)
    ids_only = ["data.features.query=[{name: user_id, kind: id}]", "data.features.candidate=[{name: item_id, kind: id}]"]
    overrides = ["data=tables", f"data.source.interactions={data / 'clicks.csv'}", "data.batch_size=64", *ids_only, f"paths.output_dir={tmp_path / 'run'}", *FAST]
    train(compose_cfg(*overrides))
    # Same users, items and counts (so the same vocabularies and split sizes), other pairs.
    shuffled = pd.read_csv(data / "clicks.csv")
    shuffled["iid"] = shuffled["iid"].sample(frac=1.0, random_state=0).to_numpy()
    shuffled.to_csv(data / "clicks.csv", index=False)
    with pytest.raises(ResumeRefused, match=r"other data(.|\n)*tables.interactions: [0-9a-f]{12}… when the run started"):
        train(compose_cfg(*overrides))


def test_the_cli_refusal_keeps_hydras_config_copy_of_the_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", "data=synthetic", "data.source.n_users=100", *FAST, f"hydra.run.dir={run_dir}"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count(f"run directory: {run_dir}") == 2  # at the start and at the end

    again = subprocess.run([*command, "loss.temperature=0.2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "loss.temperature: 0.05 when the run started, 0.2 now" in again.stderr
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["loss"]["temperature"] == 0.05
    assert "loss.temperature=0.2" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
