"""Embedding map and axis extremes on hand-made vectors."""
import numpy as np
import pandas as pd
import pytest

from twotower.explore import axis_extremes, most_specific_tag, principal_axes, titled
from twotower.plots import plot_item_map


def test_principal_axes_of_a_cross():
    # Spread 8 along x, 2 along y (sums of squares about the mean, which is the origin).
    vectors = np.array([[2, 0], [0, 0], [-2, 0], [0, 1], [0, -1]], dtype=np.float32)
    coordinates, explained = principal_axes(vectors)
    np.testing.assert_allclose(coordinates, [[2, 0], [0, 0], [-2, 0], [0, 1], [0, -1]], atol=1e-6)
    np.testing.assert_allclose(explained, [0.8, 0.2])


def test_principal_axes_refuse_more_axes_than_dimensions():
    with pytest.raises(ValueError, match=r"vectors of shape \(5, 2\) have no 3 principal axes"):
        principal_axes(np.zeros((5, 2)), n=3)


def test_axis_extremes_lists_both_ends_with_titles():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]})
    table = axis_extremes(np.array([[3.0], [1.0], [2.0]]), items, n=2)
    assert table[["end", "rank", "title"]].values.tolist() == [["low", 1, "B"], ["low", 2, "C"], ["high", 1, "A"], ["high", 2, "C"]]
    assert table["coordinate"].tolist() == [1.0, 2.0, 3.0, 2.0]


def test_most_specific_tag_is_the_rarest():
    assert most_specific_tag(pd.Series(["A|B", "B", "B|C", "", None])).tolist() == ["A", "B", "C", "(none)", "(none)"]


def test_item_map_colours_the_commonest_labels():
    coordinates = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=float)
    figure = plot_item_map(coordinates, ["x", "y", "y", "z"], top=1)
    axes = figure.axes[0]
    assert {c.get_label(): c.get_offsets().tolist() for c in axes.collections} == {"other": [[0, 0], [3, 3]], "y (2)": [[1, 1], [2, 2]]}
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("axis 1", "axis 2")


def test_titled_keeps_rank_order_and_drops_padding():
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["One", "Two", "Three"], "genres": ["a", "b", "c"]})
    table = titled(["3", "1", "9", ""], items, scores=[0.9, 0.8, 0.7, float("-inf")])
    assert table.index.tolist() == [1, 2, 3]
    assert table["item_id"].tolist() == ["3", "1", "9"] and table["score"].tolist() == [0.9, 0.8, 0.7]
    assert table["title"].tolist()[:2] == ["Three", "One"] and pd.isna(table["title"].iloc[2])

