"""Plot functions: the numbers drawn are the numbers given, axes are labelled, PNGs are written."""
import matplotlib.image
import numpy as np
import pytest

from twotower.plots import plot_learning_curves, plot_metrics_at_k, plot_recall_vs_latency


def test_learning_curves_draw_loss_and_validation_metrics(tmp_path):
    train = [{"epoch": 1, "train/loss": 6.0}, {"epoch": 2, "train/loss": 5.0}, {"epoch": 3, "train/loss": 4.5}]
    val = [{"epoch": 1, "val/recall@20": 0.2, "val/ndcg@10": 0.1}, {"epoch": 2, "val/recall@20": 0.3, "val/ndcg@10": 0.15}]
    figure = plot_learning_curves(train, val, tmp_path / "curves.png", best_epoch=2)
    loss, metrics = figure.axes
    np.testing.assert_allclose(loss.lines[0].get_xydata(), [[1, 6.0], [2, 5.0], [3, 4.5]])
    drawn = {line.get_label(): line.get_xydata().tolist() for line in metrics.lines}
    assert drawn["Recall@20"] == [[1, 0.2], [2, 0.3]]
    assert drawn["NDCG@10"] == [[1, 0.1], [2, 0.15]]
    assert "best checkpoint (epoch 2)" in drawn
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("epoch", "train/loss (epoch mean)")
    assert metrics.get_xlabel() == "epoch" and metrics.get_ylabel()
    assert matplotlib.image.imread(tmp_path / "curves.png").shape[:2] == (504, 1320)


def test_metrics_at_k_one_line_per_series_sorted_by_k(tmp_path):
    series = {
        "model": {"recall@20": 0.4, "recall@10": 0.3, "ndcg@10": 0.25, "ndcg@20": 0.28, "map@10": 0.9},
        "popularity": {"recall@10": 0.1, "recall@20": 0.17, "ndcg@10": 0.12, "ndcg@20": 0.13},
    }
    figure = plot_metrics_at_k(series, tmp_path / "at_k.png")
    recall, ndcg = figure.axes
    assert {line.get_label(): line.get_xydata().tolist() for line in recall.lines} == {
        "model": [[10, 0.3], [20, 0.4]],
        "popularity": [[10, 0.1], [20, 0.17]],
    }
    assert ndcg.lines[0].get_xydata().tolist() == [[10, 0.25], [20, 0.28]]
    assert [t.get_text() for t in recall.get_xticklabels()] == ["10", "20"]
    assert recall.get_xlabel() == "K (items recommended)" and recall.get_ylabel() == "Recall@K"
    assert (tmp_path / "at_k.png").stat().st_size > 10_000


def sweep_infos():
    def point(nprobe, r10, r100, p50, p99, chosen=False):
        return {"search_params": {"nprobe": nprobe}, "recall@10": r10, "recall@100": r100, "latency_ms": {"p50": p50, "p99": p99}, "chosen": chosen}

    settings = [point(16, 0.99, 0.97, 0.8, 1.5, chosen=True), point(4, 0.92, 0.85, 0.3, 0.6)]
    exact = {"recall@10": 1.0, "recall@100": 1.0, "latency_ms": {"p50": 2.0, "p99": 3.0}}
    return {"key": "IVF64,Flat", "sweep": {"settings": settings, "exact": exact}}


def test_recall_vs_latency_draws_the_sweep_at_10_and_100_with_exact_search_as_baseline(tmp_path):
    figure = plot_recall_vs_latency(sweep_infos(), tmp_path / "index.png")
    assert [axes.get_ylabel() for axes in figure.axes] == ["recall@10 vs exact search", "recall@100 vs exact search"]
    for axes, (low, high) in zip(figure.axes, [(0.92, 0.99), (0.85, 0.97)]):
        (curve,) = axes.containers
        assert curve.lines[0].get_xydata().tolist() == [[0.3, low], [0.8, high]]  # ordered by latency
        assert sorted(t.get_text() for t in axes.texts) == ["nprobe=16", "nprobe=4"]
        marked = {line.get_label(): line.get_xydata().tolist() for line in axes.lines if line.get_label() in ("exported setting", "exact search (brute-force scan)")}
        assert marked == {"exported setting": [[0.8, high]], "exact search (brute-force scan)": [[2.0, 1.0]]}
        assert axes.get_xscale() == "log" and "latency" in axes.get_xlabel()
    assert (tmp_path / "index.png").exists()


def test_recall_vs_latency_names_the_missing_field():
    with pytest.raises(ValueError, match=r"index infos of 'IVF64,PQ8' have no 'sweep'"):
        plot_recall_vs_latency({"key": "IVF64,PQ8", "latency_ms": {"p50": 1.0}})
