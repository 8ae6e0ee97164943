"""A monitored metric the run never logs is refused before any work, naming the cut-offs it is logged at."""
from __future__ import annotations

import pytest

from twotower.config_check import ConfigError
from twotower.task.monitor import monitor_problem
from twotower.training import train

KS, BEYOND = [10, 20, 50, 100], [10, 20]


@pytest.mark.parametrize("monitor", ["val/recall@20", "val/ndcg@100", "val/hitrate@10", "val/coverage@10", "val/recall_heavy@20",
                                     "val/impression_auc", "val/impression_ndcg@5", "val/popularity_prior", "train/loss"])
def test_metrics_the_run_logs_are_accepted(monitor):
    assert monitor_problem(monitor, KS, BEYOND) is None


@pytest.mark.parametrize("monitor, named", [
    ("val/recall@999", "recall is logged at module.ks=[10, 20, 50, 100] only"),
    ("val/coverage@50", "coverage is logged at module.beyond_accuracy_ks=[10, 20] only"),
    ("val/nonsense", "no metric 'nonsense' is logged"),
    ("val/loss", "no metric 'loss' is logged"),
    ("recall@20", "a monitored metric is 'val/<name>'"),
    ("test/recall@20", "a monitored metric is 'val/<name>'"),
    ("train/recall@20", "the only training metric is train/loss"),
])
def test_metrics_the_run_never_logs_are_named(monitor, named):
    assert named in monitor_problem(monitor, KS, BEYOND)


def test_train_refuses_them_before_reading_any_data(compose_cfg, tmp_path):
    cfg = compose_cfg("data=tables", f"data.source.interactions={tmp_path / 'absent.csv'}", "monitor.metric=val/recall@30", "logger=none")
    with pytest.raises(ConfigError, match=r"recall is logged at module.ks=\[10, 20, 50, 100\] only"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override, named", [
    ("callbacks.model_checkpoint.monitor=val/ndcg@10",
     r"callbacks.model_checkpoint.monitor='val/ndcg@10' differs from monitor.metric='val/recall@20'"),
    ("callbacks.early_stopping.mode=min", r"callbacks.early_stopping.mode='min' differs from monitor.mode='max'"),
])
def test_a_callback_monitoring_another_metric_than_monitor_is_refused(compose_cfg, tmp_path, override, named):
    """callbacks.model_checkpoint.monitor=val/ndcg@10 picked the checkpoint by NDCG while early stopping, the popularity
    prior's weight and a sweep's objective followed monitor.metric: one run, two notions of best, nothing said."""
    cfg = compose_cfg("data=tables", f"data.source.interactions={tmp_path / 'absent.csv'}", "logger=none", override)
    with pytest.raises(ConfigError, match=named + r"; set monitor.metric / monitor.mode, which every callback and a sweep follow"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
