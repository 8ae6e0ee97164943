"""Own tables from csv/parquet, predefined splits, and bad input stopped before training with a named error."""
import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from twotower.data.sources import SyntheticSource, TableSource
from twotower.datasets.movielens import MovieLens100K


@pytest.fixture
def tables(tmp_path):
    inter = pd.DataFrame({"uid": [1, 1, 2, 2, 3, 3], "iid": ["a", "b", "a", "c", "b", "c"], "ts": [5, 6, 7, 8, 9, 10]})
    users = pd.DataFrame({"uid": [1, 2, 3], "age": [20.0, 30.0, 40.0]})
    items = pd.DataFrame({"iid": ["a", "b", "c"], "genres": ["X|Y", "Y", "Z"]})
    inter.to_csv(tmp_path / "inter.csv", index=False)
    users.to_parquet(tmp_path / "users.parquet")
    items.to_csv(tmp_path / "items.csv", index=False)
    return tmp_path


def test_csv_and_parquet_with_renamed_columns(tables):
    t = TableSource(str(tables / "inter.csv"), users=str(tables / "users.parquet"), items=str(tables / "items.csv"),
                    user_id="uid", item_id="iid", timestamp="ts").load()
    assert list(t.interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert t.interactions["user_id"].tolist() == ["1", "1", "2", "2", "3", "3"]  # ids are string keys
    assert set(t.users["user_id"]) == {"1", "2", "3"}


def test_one_column_for_two_roles_is_refused():
    with pytest.raises(ValueError, match=r"data\.source\.user_id and data\.source\.item_id both name column 'id'"):
        TableSource("inter.csv", user_id="id", item_id="id")


def test_predefined_split_from_separate_files(tables):
    inter = pd.read_csv(tables / "inter.csv")
    for part, rows in (("train", [0, 2, 4]), ("val", [1]), ("test", [3, 5])):
        inter.iloc[rows].to_parquet(tables / f"{part}.parquet")
    t = TableSource(train=str(tables / "train.parquet"), val=str(tables / "val.parquet"), test=str(tables / "test.parquet"), user_id="uid", item_id="iid").load()
    assert t.interactions["split"].tolist() == ["train"] * 3 + ["val"] + ["test"] * 2


@pytest.mark.parametrize("breakage, message", [
    (lambda d: pd.DataFrame({"uid": [1], "item": ["a"]}).to_csv(d / "inter.csv", index=False), r"inter\.csv has no column\(s\) \['iid'\]"),
    (lambda d: (d / "inter.csv").write_text(""), r"inter\.csv is empty"),
    (lambda d: pd.DataFrame({"uid": [1, 9], "iid": ["a", "a"]}).to_csv(d / "inter.csv", index=False), r"column 'uid' \(user_id\) names 1 row\(s\) with id\(s\) not in .*users\.parquet, e\.g\. \['9'\]"),
    (lambda d: pd.DataFrame({"uid": [1], "iid": ["q"]}).to_csv(d / "inter.csv", index=False), r"column 'iid' \(item_id\) names 1 row\(s\) .* not in .*items\.csv, e\.g\. \['q'\]"),
    (lambda d: pd.DataFrame({"uid": [1, None], "iid": ["a", "b"]}).to_csv(d / "inter.csv", index=False), r"column 'uid' \(user_id\) has 1 missing value\(s\), first at row 1"),
    (lambda d: pd.DataFrame({"iid": ["a", "a"]}).to_csv(d / "items.csv", index=False), r"items\.csv: column 'iid' \(item_id\) repeats id\(s\) \['a'\]"),
    # A column named like the one a configured column is renamed to: two 'item_id' columns, a pandas error naming nothing.
    (lambda d: pd.read_csv(d / "items.csv").assign(item_id=["p", "q", "r"]).to_csv(d / "items.csv", index=False),
     r"items\.csv has both column 'iid', read as item_id, and a column 'item_id': rename or drop 'item_id'"),
    (lambda d: pd.read_csv(d / "inter.csv").assign(user_id=0).to_csv(d / "inter.csv", index=False),
     r"inter\.csv has both column 'uid', read as user_id, and a column 'user_id': rename or drop 'user_id'"),
])
def test_bad_tables_are_named(tables, breakage, message):
    breakage(tables)
    source = TableSource(str(tables / "inter.csv"), users=str(tables / "users.parquet"), items=str(tables / "items.csv"), user_id="uid", item_id="iid")
    with pytest.raises(ValueError, match=message):
        source.load()


def test_missing_file_and_unknown_format(tables):
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        TableSource(str(tables / "nope.csv")).load()
    (tables / "x.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown format '.xlsx'"):
        TableSource(str(tables / "x.xlsx")).load()
    with pytest.raises(ValueError, match="either 'interactions' or all of"):
        TableSource(train="a.csv")


def test_nan_in_numeric_feature_stops_before_training(tables, compose_cfg):
    pd.DataFrame({"uid": [1, 2, 3], "age": [20.0, np.nan, 40.0]}).to_parquet(tables / "users.parquet")
    cfg = compose_cfg("data=tables", f"data.source.interactions={tables / 'inter.csv'}", f"data.source.users={tables / 'users.parquet'}",
                      "data.source.user_id=uid", "data.source.item_id=iid",
                      "data.features.query=[{name: user_id, kind: id}, {name: age, kind: numeric}]", "data.features.candidate=[{name: item_id, kind: id}]",
                      "data.split.test=0.0", "data.split.val=0.4")
    dm = instantiate(cfg.data)
    with pytest.raises(ValueError, match=r"users\.parquet: numeric column 'age' has 1 missing/NaN value\(s\), first at row 1 \(set missing: mean"):
        dm.setup()


def test_non_numeric_value_in_numeric_column_is_named(tables, compose_cfg):
    pd.DataFrame({"uid": [1, 2, 3], "age": ["20", "old", "40"]}).to_parquet(tables / "users.parquet")
    cfg = compose_cfg("data=tables", f"data.source.interactions={tables / 'inter.csv'}", f"data.source.users={tables / 'users.parquet'}",
                      "data.source.user_id=uid", "data.source.item_id=iid",
                      "data.features.query=[{name: age, kind: numeric}]", f"data.source.items={tables / 'items.csv'}",
                      "data.features.candidate=[{name: genres, kind: multi_hot, separator: '|'}]", "data.use_ids=false", "data.split.test=0.0", "data.split.val=0.4")
    with pytest.raises(ValueError, match=r"numeric column 'age' has a non-numeric value 'old' at row 1"):
        instantiate(cfg.data).setup()


def test_synthetic_source_is_deterministic():
    a, b = SyntheticSource(n_users=20, n_items=15, seed=1).load(), SyntheticSource(n_users=20, n_items=15, seed=1).load()
    pd.testing.assert_frame_equal(a.interactions, b.interactions)


def test_movielens_missing_copy_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="MovieLens-100K not found in .*need u.data, u.item, u.user"):
        MovieLens100K(path=str(tmp_path), download=False).load()


def test_damaged_movielens_copy_is_refused(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t100\n")
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||url" + "|0" * 19 + "\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    with pytest.raises(ValueError, match=r"counts \{'ratings': 1, 'users': 1, 'items': 1\}, expected"):
        MovieLens100K(path=str(tmp_path)).load()
