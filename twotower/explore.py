"""Looking at what a trained model learned: a 2-D map of the items, what its main axes mean, titled tables."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def principal_axes(vectors: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of each vector along the ``n`` directions of largest variance (PCA by SVD).

    The towers' output dimensions are an arbitrary rotation of what the model learned; the principal
    axes are ordered by how much of the catalogue's spread they explain, so they are the ones to read.

    Returns:
        coordinates (n_items, n), and the share of the variance each axis explains (n,).
    """
    if vectors.ndim != 2 or n > min(vectors.shape):
        raise ValueError(f"vectors of shape {vectors.shape} have no {n} principal axes")
    centred = vectors - vectors.mean(0)
    _, singular, axes = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    # Fix each axis' sign (SVD's is arbitrary) so that its largest coordinate is positive: reruns read the same.
    coordinates = centred @ axes[:n].T  # (n_items, n)
    signs = np.sign(coordinates[np.abs(coordinates).argmax(0), np.arange(n)])
    return coordinates * signs, (singular[:n] ** 2) / (singular**2).sum()


def axis_extremes(coordinates: np.ndarray, items: pd.DataFrame, n: int = 5, columns: Sequence[str] = ("title", "genres")) -> pd.DataFrame:
    """The ``n`` items at either end of each axis: one row per (axis, end, rank), with the items' ``columns``.

    Args:
        coordinates: (n_items, n_axes), rows in the order of ``items``.
    """
    if len(coordinates) != len(items):
        raise ValueError(f"coordinates have {len(coordinates)} rows, items table has {len(items)}")
    shown = [c for c in columns if c in items.columns]
    rows = []
    for axis in range(coordinates.shape[1]):
        order = np.argsort(coordinates[:, axis], kind="stable")
        for end, picked in (("low", order[:n]), ("high", order[::-1][:n])):
            for rank, row in enumerate(picked, start=1):
                rows.append({"axis": axis + 1, "end": end, "rank": rank, "coordinate": float(coordinates[row, axis]),
                             **{c: items[c].iat[row] for c in shown}})
    return pd.DataFrame(rows)


def most_specific_tag(tags: pd.Series, separator: str = "|") -> pd.Series:
    """Each row's rarest tag (``"Animation|Children's|Comedy"`` -> ``"Animation"``), to colour a map by.

    The rarest tag says most about an item; the first one would colour the map by alphabetical order.
    Rows with no tag get ``"(none)"``.
    """
    lists = tags.fillna("").astype(str).map(lambda text: [t for t in text.split(separator) if t])
    counts = pd.Series([t for tags_of_row in lists for t in tags_of_row]).value_counts()
    return lists.map(lambda row: min(row, key=lambda t: (counts[t], t)) if row else "(none)")


def titled(item_ids: Sequence[Any], items: pd.DataFrame, scores: Sequence[float] | None = None, columns: Sequence[str] = ("title", "genres")) -> pd.DataFrame:
    """Item ids (best first) as a table with the items' ``columns``, indexed by rank from 1.

    E.g. ``titled(retriever.recommend(["42"]).item_ids[0], retriever.items)``; padding ids ``""`` are dropped,
    ids missing from ``items`` get empty cells.
    """
    ids = [str(i) for i in item_ids if str(i) != ""]
    shown = [c for c in columns if c in items.columns]
    table = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id").set_index("item_id")
    frame = table.reindex(ids)[shown].reset_index()
    if scores is not None:
        frame.insert(1, "score", np.round(np.asarray(scores, dtype=float)[: len(ids)], 4))
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
    return frame

