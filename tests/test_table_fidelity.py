"""Issue 15: own tables reach the model as written (ids, timestamps, list and text cells, repeated pairs)."""
import logging
import re

import numpy as np
import pandas as pd
import pytest

from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.sources import TableSource
from twotower.data.splits import PredefinedSplit, RandomSplit
from twotower.data.vocab import Vocabulary
from twotower.features import FeatureSpec, fit_feature


def load(tmp_path, inter, items=None, suffix="csv", **kw):
    path = tmp_path / f"inter.{suffix}"
    inter.to_csv(path, index=False) if suffix == "csv" else inter.to_parquet(path)
    items_path = None
    if items is not None:
        items_path = tmp_path / f"items.{suffix}"
        items.to_csv(items_path, index=False) if suffix == "csv" else items.to_parquet(items_path)
    return TableSource(str(path), items=str(items_path) if items_path else None, **kw).load()


# 1. ids ------------------------------------------------------------------------------------------

def test_csv_ids_keep_leading_zeros(tmp_path):
    (tmp_path / "inter.csv").write_text("user_id,item_id\n007,0042\n7,42\n")
    t = TableSource(str(tmp_path / "inter.csv")).load()
    assert t.interactions["user_id"].tolist() == ["007", "7"]
    assert t.interactions["item_id"].tolist() == ["0042", "42"]
    assert sorted(t.users["user_id"]) == ["007", "7"]


def test_parquet_integral_float_ids_do_not_overflow(tmp_path):
    t = load(tmp_path, pd.DataFrame({"user_id": [1e20, 3.0], "item_id": [1, 2]}), suffix="parquet")
    assert t.interactions["user_id"].tolist() == ["100000000000000000000", "3"]
    assert t.interactions["item_id"].tolist() == ["1", "2"]
    # Serving keys the same id the same way.
    assert Vocabulary.fit(t.interactions["user_id"]).lookup([1e20, "100000000000000000000"]).tolist() == [1, 1]


def test_non_integral_float_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"inter\.parquet: column 'item_id' has the id 2\.5"):
        load(tmp_path, pd.DataFrame({"user_id": ["a", "b"], "item_id": [1.0, 2.5]}), suffix="parquet")


def test_an_empty_string_id_is_refused(tmp_path):
    """A parquet string id '' trained and was exported: serving pads short answers with '', so the
    item was dropped from every HTTP answer and read as padding by Recommendations' users."""
    items = pd.DataFrame({"item_id": ["x", "", "z"]})
    with pytest.raises(ValueError, match=r"items\.parquet: column 'item_id' has an empty id '' at row 1"):
        load(tmp_path, pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "z"]}), items=items, suffix="parquet")


def test_a_list_id_is_refused_naming_the_file_column_and_row(tmp_path):
    """A parquet list column as ids stopped with pandas' bare "unhashable type: 'list'", naming nothing."""
    items = pd.DataFrame({"item_id": [["x"], ["y"]]})
    with pytest.raises(ValueError, match=r"items\.parquet: column 'item_id' has the id \['x'\] of type list at row 0; ids are strings or integers"):
        load(tmp_path, pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}), items=items, suffix="parquet")


# 2. timestamps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_datetimes_become_unix_seconds(tmp_path, unit):
    ts = pd.Series(pd.to_datetime(["2020-01-01", "2020-01-08"])).astype(f"datetime64[{unit}]")
    t = load(tmp_path, pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "ts": ts}), suffix="parquet", timestamp="ts")
    assert t.interactions["timestamp"].dtype == np.float64
    assert t.interactions["timestamp"].tolist() == [1577836800.0, 1578441600.0]
    assert np.diff(t.interactions["timestamp"])[0] == 7 * 86400  # a week is a week, whatever the unit


def test_tz_aware_datetimes_become_utc_seconds(tmp_path):
    ts = pd.Series(pd.to_datetime(["2020-01-01 01:00"])).dt.tz_localize("Europe/Berlin")
    t = load(tmp_path, pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "ts": ts}), suffix="parquet", timestamp="ts")
    assert t.interactions["timestamp"].tolist() == [1577836800.0]


def test_millisecond_numbers_are_refused(tmp_path):
    inter = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "ts": [1577836800, 1577836800000]})
    with pytest.raises(ValueError, match=r"column 'ts' \(timestamp\) has the value .*1577836800000.* at row 1.*milliseconds"):
        load(tmp_path, inter, timestamp="ts")


# 3. list and text cells --------------------------------------------------------------------------

def test_nulls_inside_multi_hot_lists_are_no_tag(tmp_path):
    items = pd.DataFrame({"item_id": ["x", "y"], "tags": [[None], ["a", None]]})
    fitted = fit_feature(FeatureSpec("tags", "multi_hot"), items, "items.parquet")
    assert fitted.vocab.values == ["a"]
    assert fitted.transform(items, "items.parquet").tolist() == [[0], [1]]


def test_all_digit_titles_from_csv_are_text(tmp_path):
    items = pd.DataFrame({"item_id": ["x", "y"], "title": [1984, 2001]})
    t = load(tmp_path, pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]}), items=items)
    fitted = fit_feature(FeatureSpec("title", "text"), t.items, "items.csv")
    assert sorted(fitted.vocab.values) == ["1984", "2001"]
    assert (fitted.transform(t.items, "items.csv") > 0).all()


def test_numeric_columns_given_as_text_or_categorical_are_not_empty():
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "year": [1984.0, 2001.0, np.nan], "code": [7, 7, 8]})
    text = fit_feature(FeatureSpec("year", "text"), items, "items.parquet")
    assert sorted(text.vocab.values) == ["1984", "2001"]
    assert text.transform(items, "items.parquet")[:, 0].tolist() != [0, 0, 0]
    categorical = fit_feature(FeatureSpec("code", "categorical", prefix=1), items, "items.parquet")
    assert categorical.vocab.values == ["7", "8"]


def test_list_in_a_text_column_is_refused():
    items = pd.DataFrame({"item_id": ["x", "y"], "title": ["ok", ["a", "b"]]})
    with pytest.raises(ValueError, match=r"items\.parquet: text column 'title' has the value \['a', 'b'\] \(list\) at row 1"):
        fit_feature(FeatureSpec("title", "text"), items, "items.parquet")


# 4. repeated (user, item) rows --------------------------------------------------------------------

def test_repeated_pairs_are_merged_keeping_the_latest(tmp_path, caplog):
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "a"], "item_id": ["x", "y", "x", "x"], "ts": [1, 2, 3, 9]})
    with caplog.at_level(logging.INFO):
        t = load(tmp_path, inter, timestamp="ts")
    assert t.interactions[["user_id", "item_id", "timestamp"]].values.tolist() == [["a", "y", 2.0], ["b", "x", 3.0], ["a", "x", 9.0]]
    assert "1 repeated (user, item) rows merged" in caplog.text


def test_no_pair_lands_in_both_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"user_id": rng.integers(0, 50, 400).astype(str), "item_id": rng.integers(0, 40, 400).astype(str)})
    inter = pd.concat([pairs, pairs.sample(frac=0.3, random_state=0)], ignore_index=True)
    t = load(tmp_path, inter)
    split = RandomSplit(test=0.3, val=0.1, seed=0)(t.interactions)
    key = t.interactions["user_id"] + "\t" + t.interactions["item_id"]
    assert not set(key[split == "train"]) & set(key[split == "test"])


def test_predefined_split_merges_repeats_within_a_split_only(tmp_path):
    inter = pd.DataFrame({"user_id": ["a", "a", "a"], "item_id": ["x", "x", "x"], "part": ["train", "train", "test"]})
    t = load(tmp_path, inter, split="part")
    assert t.interactions["split"].tolist() == ["train", "test"]


@pytest.mark.parametrize("source, column", [({"split": "part"}, "'part' (split)"), ({}, "'split'")])
def test_a_split_column_under_another_split_is_refused(tmp_path, source, column):
    """A given split (data.source.split, or a column named 'split') merges repeats per given split; a
    random split then labelled each copy apart: (a, x) was in train and in test, nothing raised."""
    name = source.get("split", "split")
    inter = pd.DataFrame({"user_id": ["a"] * 6 + ["b"] * 6, "item_id": list("xyzuvw") * 2,
                          name: ["train", "test", "train", "val", "train", "train"] * 2})
    inter = pd.concat([inter, inter.assign(**{name: inter[name].map({"train": "test", "test": "train", "val": "val"})})], ignore_index=True)
    inter.to_csv(tmp_path / "i.csv", index=False)
    features = {"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "item_id", "kind": "id"}]}
    dm = TwoTowerDataModule(TableSource(str(tmp_path / "i.csv"), **source), features, RandomSplit(test=0.3, val=0.2), batch_size=2)
    with pytest.raises(ValueError, match=rf"i\.csv: column {re.escape(column)} .* RandomSplit.*data/split=predefined"):
        dm.setup()
    given = TwoTowerDataModule(TableSource(str(tmp_path / "i.csv"), **source), features, PredefinedSplit(), batch_size=2)
    given.setup()
    assert given.prepared.split_counts == {"train": 10, "val": 2, "test": 10}  # as given, repeats merged within a split
