"""Figures of a run and of an index, from plain metric dicts (no Lightning, no pyplot state).

Each ``plot_*`` returns a matplotlib ``Figure`` (a notebook shows it inline) and writes a PNG when
given a path. Figures are built on ``matplotlib.figure.Figure`` directly, so no display or GUI
backend is needed on a cluster node and nothing leaks between calls.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator, ScalarFormatter

DPI = 120
NAMES = {"recall": "Recall", "ndcg": "NDCG", "map": "MAP", "mrr": "MRR", "precision": "Precision", "hitrate": "Hit rate"}


def plot_learning_curves(
    train: Sequence[Mapping[str, float]],
    val: Sequence[Mapping[str, float]],
    path: str | Path | None = None,
    metrics: Sequence[str] = ("val/recall@20", "val/ndcg@10"),
    loss: str = "train/loss",
    best_epoch: float | None = None,
) -> Figure:
    """Training loss and validation metrics against epochs, side by side.

    Args:
        train: one row per epoch, ``{"epoch": 1, "train/loss": 5.2}``.
        val: one row per validation, ``{"epoch": 1, "val/recall@20": 0.31, ...}``.
        metrics: the validation metrics drawn on the right.
        best_epoch: where the selected checkpoint was taken (a dashed line), if known.
    """
    figure = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
    left, right = figure.subplots(1, 2)
    points = [(row["epoch"], row[loss]) for row in train if loss in row]
    if points:
        left.plot(*zip(*points), marker="o", color="tab:blue")
    left.set(title="Training loss", xlabel="epoch", ylabel=f"{loss} (epoch mean)")
    for name in metrics:
        points = [(row["epoch"], row[name]) for row in val if name in row]
        if points:
            right.plot(*zip(*points), marker="o", label=_label(name))
    right.set(title="Validation", xlabel="epoch", ylabel="metric value")
    if best_epoch is not None:
        right.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best checkpoint (epoch {best_epoch:g})")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    if right.get_legend_handles_labels()[0]:
        right.legend(loc="best")
    return _save(figure, path)


def plot_metrics_at_k(
    series: Mapping[str, Mapping[str, float]],
    path: str | Path | None = None,
    names: Sequence[str] = ("recall", "ndcg"),
    title: str | None = None,
) -> Figure:
    """One panel per metric name, the metric against the cut-off K, one line per series.

    Args:
        series: label -> ``{"recall@10": 0.2, "recall@20": 0.3, "ndcg@10": ...}`` (no split prefix),
            e.g. ``{"val": ..., "test": ..., "popularity (test)": ...}``.
        names: metric names, one panel each.
    """
    figure = Figure(figsize=(5.2 * len(names), 4.2), dpi=DPI, layout="constrained")
    panels = figure.subplots(1, len(names), squeeze=False)[0]
    for axes, name in zip(panels, names):
        ks: set[int] = set()
        for label, values in series.items():
            points = sorted((int(key.split("@")[1]), value) for key, value in values.items() if key.split("@")[0] == name and "@" in key)
            if points:
                axes.plot(*zip(*points), marker="o", label=label)
                ks.update(k for k, _ in points)
        axes.set(title=f"{NAMES.get(name, name)}@K", xlabel="K (items recommended)", ylabel=f"{NAMES.get(name, name)}@K", xscale="log")
        # Ticks at the measured cut-offs, as plain numbers rather than powers of ten.
        axes.xaxis.set_major_locator(FixedLocator(sorted(ks)))
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_recall_vs_latency(index_infos: Mapping[str, Any], path: str | Path | None = None) -> Figure:
    """Recall@10 and @100 against exact search versus single-query latency, over the index's sweep of search settings.

    One panel per k: the index's curve through every value of its tuned parameter (each point
    labelled with it, the exported setting circled, a bar from p50 to p99) and exact search (a
    brute-force scan) as the baseline: a star at recall 1 and its latency, with a dashed line.

    Args:
        index_infos: an ``index_infos.json`` dict with ``sweep: {settings: [...], exact: {...}}``
            (``twotower.index.sweep``).
    """
    if "sweep" not in index_infos:
        raise ValueError(f"index infos of '{index_infos.get('key', '?')}' have no 'sweep' (fields: {sorted(index_infos)}); re-export to measure it")
    settings, exact = index_infos["sweep"]["settings"], index_infos["sweep"]["exact"]
    ks = [k for k in (10, 100) if f"recall@{k}" in exact]
    figure = Figure(figsize=(6 * len(ks), 4.6), dpi=DPI, layout="constrained")
    for axes, k in zip(figure.subplots(1, len(ks), squeeze=False)[0], ks):
        metric = f"recall@{k}"
        points = sorted(settings, key=lambda point: point["latency_ms"]["p50"])
        p50 = [point["latency_ms"]["p50"] for point in points]
        p99 = [point["latency_ms"]["p99"] for point in points]
        recall = [point[metric] for point in points]
        line = axes.errorbar(p50, recall, xerr=[[0] * len(p50), [b - a for a, b in zip(p50, p99)]], marker="o", capsize=3, label=index_infos.get("key", "index"))
        color = line[0].get_color()
        labelled = None
        for point, x, y in zip(points, p50, recall):
            params = ", ".join(f"{name}={value:g}" for name, value in point["search_params"].items())
            if params and y != labelled:  # settings past the first at a recall (often 1.0) would print over it
                labelled = y
                axes.annotate(params, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
            if point["chosen"] and len(points) > 1:
                axes.plot([x], [y], marker="o", markersize=13, markerfacecolor="none", markeredgecolor=color, linestyle="none", label="exported setting")
        scan = exact["latency_ms"]
        axes.axvline(scan["p50"], color="0.4", linestyle="--", linewidth=1)
        axes.plot([scan["p50"]], [1.0], marker="*", markersize=12, color="0.2", linestyle="none", label="exact search (brute-force scan)")
        axes.set(title=f"Index {metric} vs latency", xlabel="single-query latency, ms (marker p50, bar to p99)",
                 ylabel=f"{metric} vs exact search", xscale="log")
        # Plain numbers (0.1, 0.2, 0.5, 1) rather than 10^-1 on the log axis; minor ticks labelled at 2 and 5 only.
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        axes.set_ylim(min(0.9, min(recall) - 0.05), 1.01)
        axes.grid(alpha=0.3, which="both")
        axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def _label(name: str) -> str:
    """``val/recall@20`` -> ``Recall@20``."""
    metric = name.split("/")[-1]
    base, _, k = metric.partition("@")
    return f"{NAMES.get(base, base)}@{k}" if k else NAMES.get(base, base)


def _save(figure: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    return figure


def plot_item_map(coordinates, labels: Sequence[str], path: str | Path | None = None, top: int = 8, title: str = "Item embeddings", axis_names: Sequence[str] = ("axis 1", "axis 2")) -> Figure:
    """A scatter of items in two dimensions, coloured by label (the ``top`` commonest; the rest grey).

    Args:
        coordinates: (n_items, 2), e.g. from ``twotower.explore.principal_axes``.
        labels: one per item, e.g. its genre.
    """
    if len(coordinates) != len(labels):
        raise ValueError(f"coordinates have {len(coordinates)} rows, labels {len(labels)}")
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    shown = sorted(counts, key=lambda label: (-counts[label], label))[:top]
    figure = Figure(figsize=(8, 6.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    rest = [i for i, label in enumerate(labels) if label not in shown]
    if rest:
        axes.scatter(coordinates[rest, 0], coordinates[rest, 1], s=8, color="lightgrey", label="other")
    for label in shown:
        chosen = [i for i, other in enumerate(labels) if other == label]
        axes.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=10, alpha=0.8, label=f"{label} ({len(chosen)})")
    axes.set(title=title, xlabel=axis_names[0], ylabel=axis_names[1])
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8, markerscale=1.5)
    return _save(figure, path)
