"""The throughput benchmark in its CI-sized form: every path runs and the report holds every figure."""
import math
import re

import pytest
import torch

from benchmarks import throughput


@pytest.mark.quick
def test_ci_sized_benchmark_runs_every_path_and_writes_the_report(tmp_path):
    out = tmp_path / "throughput.md"
    results = throughput.main(["--size", "ci", "--device", "cpu", "--no-compile", "--no-movielens", "--out", str(out)])
    names = [name for name, *_ in results["train"]]
    assert names[0] == "raw loop (yardstick)"
    assert any(n.startswith("twotower, AdamW") for n in names) and any("row-wise Adagrad" in n for n in names)
    assert any(n.startswith("naive Lightning") for n in names)
    assert all(value > 0 and math.isfinite(value) and cpu > 0 for _, value, cpu, _ in results["train"])
    assert all(s > 0 for s in results["validate_s"]) and results["raw_eval_users_per_s"] > 0
    report = out.read_text()
    assert "CPU" in report  # the device is named
    for name in names:
        assert re.search(rf"\| {re.escape(name)} \| [\d,]+ \| \d+\.\d\d \| [\d,]+ \| \d+\.\d\d \|", report), name
    assert "users/s" in report and "`trainer.validate`, call 2" in report


def test_prepared_datamodule_serves_twotower_batches():
    size = throughput.SIZES["ci"]
    source = throughput.SkewedSource(200, 150, 3_000)
    arrays = source.generate()
    dm = throughput.prepared_datamodule(arrays, source.n_genres, val_share=0.1, batch_size=64, eval_batch_size=size.eval_batch)
    rows = torch.arange(64)
    batch = dm.train_batch(rows)
    users, items = dm.prepared.train_pairs[rows].unbind(1)
    assert torch.equal(batch.query["segment"], torch.from_numpy(arrays.segment)[users] + 1)  # index 0 is OOV
    assert torch.equal(batch.candidate["genres"], torch.from_numpy(arrays.genres)[items] + 1)
    counts = torch.bincount(dm.prepared.train_pairs[:, 1], minlength=150).double()
    assert torch.allclose(batch.log_q, (counts / counts.sum()).log().float()[items])
    assert len(dm.prepared.train_pairs) + dm.prepared.heldout["val"].indices.numel() == 3_000


@pytest.mark.slow
def test_ci_sized_benchmark_compiles_the_raw_loop_and_the_towers(tmp_path):
    results = throughput.main(["--size", "ci", "--device", "cpu", "--compile", "--no-movielens", "--out", str(tmp_path / "t.md")])
    assert results["failures"] == []
    names = [name for name, *_ in results["train"]]
    assert "raw loop, torch.compile" in names and any(n.endswith(", compile") for n in names)
