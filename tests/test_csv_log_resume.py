"""Rerunning a run directory to resume appends to its CSV log: the earlier epochs' rows stay."""
import pandas as pd

from twotower.training import train


def validated(log: pd.DataFrame) -> set:
    """The epochs a log holds validation rows of."""
    return set(log.dropna(subset=["val/recall@20"])["epoch"])


def test_resuming_a_run_appends_to_its_metrics_csv(compose_cfg, tmp_path):
    overrides = ["data=synthetic", "data.source.n_users=100", "data.source.n_items=80", "logger=csv", "trainer.enable_progress_bar=false"]
    train(compose_cfg(*overrides, "trainer.max_epochs=1", "test=false"))
    log = tmp_path / "csv" / "metrics.csv"  # compose_cfg's run directory is tmp_path
    first = pd.read_csv(log)
    assert validated(first) == {0}

    # The resumed run trains epoch 1 and then logs test/ columns the file does not have yet.
    train(compose_cfg(*overrides, "trainer.max_epochs=2", "test=true"))
    both = pd.read_csv(log)
    assert validated(both) == {0, 1}
    pd.testing.assert_frame_equal(both.iloc[: len(first)][first.columns], first)  # the first run's rows, unchanged
    assert both["test/recall@20"].notna().sum() == 1
