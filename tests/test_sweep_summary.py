"""A -m sweep ends with a table of its jobs: overrides, the monitored metric, the run directory."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from tests.conftest import CONF
from twotower.sweep_summary import METRICS_FILE, SUMMARY_FILE, format_table, sweep_rows

ROOT = CONF.parent


def test_a_sweep_prints_and_writes_its_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "train.py", "-m", "data=synthetic", "data.source.n_users=100", "logger=none", "test=false",
               "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "loss.temperature=0.05,0.2", f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(sweep_dir / SUMMARY_FILE) as f:
        rows = list(csv.DictReader(f))
    assert [r["overrides"] for r in rows] == ["loss.temperature=0.05", "loss.temperature=0.2"]
    for row in rows:
        value = json.loads((sweep_dir / row["job"] / METRICS_FILE).read_text())["metrics"]["val/recall@20"]
        assert float(row["val/recall@20"]) == value and row["dir"] == str(sweep_dir / row["job"])
        printed = next(line for line in done.stdout.splitlines() if line.endswith(f"  {row['dir']}"))
        assert printed.split() == [row["job"], row["overrides"], f"{value:.4f}", row["dir"]]
    assert f"sweep summary: {sweep_dir / SUMMARY_FILE}" in done.stdout


def test_jobs_are_listed_best_first_and_an_unfinished_one_last(tmp_path):
    for job, (override, value) in enumerate([("optimizer.lr=0.1", 0.2), ("optimizer.lr=0.01", None), ("optimizer.lr=0.001", 0.3)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- {override}\n")
        if value is not None:
            (tmp_path / str(job) / METRICS_FILE).write_text(json.dumps({"metrics": {"val/ndcg@10": value}}))
    rows = sweep_rows(tmp_path, "val/ndcg@10")
    assert [r["val/ndcg@10"] for r in rows] == [0.2, None, 0.3]
    lines = format_table(rows, "val/ndcg@10", "max").splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["optimizer.lr=0.001", "optimizer.lr=0.1", "optimizer.lr=0.01"]
    assert "not finished" in lines[3]
    assert format_table(rows, "val/ndcg@10", "min").splitlines()[1].split()[1] == "optimizer.lr=0.1"
