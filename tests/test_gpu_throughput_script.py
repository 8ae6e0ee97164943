"""benchmarks/gpu_throughput.sh: its data-path step (the sharded stream feeding the device), and the whole script at CI sizes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import shards_scale

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.quick
def test_device_feed_step_times_every_training_pair_next_to_the_bare_read(tmp_path):
    out = tmp_path / "throughput.md"
    out.write_text("# figures written by benchmarks.throughput\n")
    subprocess.run([sys.executable, "-m", "benchmarks.shards_scale", "--device-feed", "cpu", "--sizes", "3e4", "--eval-users", "100",
                    "--dir", str(tmp_path / "shards"), "--out", str(out)], cwd=ROOT, check=True, capture_output=True, text=True)
    report = out.read_text()
    assert report.startswith("# figures written by benchmarks.throughput\n")  # appended, not overwritten
    assert "## Data path feeding the device" in report and "CPU" in report
    row = re.search(r"\| 30,000 \| (\d+\.\d+) \| [\d.]+M \| (\d+\.\d+) \| (\d+\.\d+) \| ([\d.]+)M \| (\d+)% \|", report)
    assert row, report
    assert all(float(row[i]) > 0 for i in (1, 2, 3, 4))
    assert not (tmp_path / "shards" / "device_feed").exists()  # the shards are removed without --keep


def test_device_feed_counts_the_whole_epoch(tmp_path):
    result = shards_scale.device_feed(tmp_path / "feed", 20_000, "cpu", eval_users=100)
    assert result["pairs"] % shards_scale.BATCH == 0 and result["pairs"] > 0.6 * 20_000 * 0.72  # every full batch of the train share
    assert len(result["epochs_s"]) == 2 and result["read_s"] > 0 and not result["pinned"]


@pytest.mark.slow
def test_the_script_runs_at_ci_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "throughput-ci.md"
    env = {**os.environ, "SIZE": "ci", "DEVICE": "cpu", "RESULT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    subprocess.run(["bash", "benchmarks/gpu_throughput.sh"], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    report = out.read_text()
    assert "raw loop (yardstick)" in report and "## Data path feeding the device" in report and "Failed" not in report
