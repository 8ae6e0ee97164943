"""The time kinds: bucket numbers by hand, column parsing, fitting, the datamodule's per-request times, and serving with ``now``."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from tests import readme_data
from tests.export_fixtures import export_config
from twotower import Retriever
from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.schema import Schema
from twotower.data.sources import TableSource
from twotower.data.splits import HashSplit
from twotower.data.streaming.source import ShardSource
from twotower.data.vocab import Vocabulary
from twotower.exporting import export, find_checkpoint, load_checkpoint
from twotower.features import FeatureSpec, FittedFeature, Preprocessor, fit_feature
from twotower.features.time import DAY, TimeEncoder, age_bucket_count, times_of
from twotower.query_inputs import query_inputs
from twotower.training import train

R = 1_000_000_000.0  # the reference: 2001-09-09 01:46:40 UTC, a Sunday


def _buckets(encoder: TimeEncoder, t: torch.Tensor) -> list[int]:
    """Which row of the age table each time reads (the rows are distinct at random init)."""
    out = encoder(t)
    return [int(torch.cdist(row[None], encoder.age.weight).argmin()) for row in out]


def test_ages_fall_in_log2_day_buckets_clipped_to_the_oldest_and_nan_is_missing():
    encoder = TimeEncoder(R, buckets=4, dim=8)
    ages_in_days = [0.0, 0.5, 0.999, 1.0, 2.9, 3.0, 6.99, 7.0, 14.9, 400.0, -3.0]
    t = torch.tensor([R - d * DAY for d in ages_in_days] + [math.nan], dtype=torch.float64)
    # 1 + floor(log2(1 + days)): [0, 1) -> 1, [1, 3) -> 2, [3, 7) -> 3, [7, 15) -> 4; older clips to 4,
    # a time after the reference (age -3 days) is age 0, NaN is row 0.
    assert _buckets(encoder, t) == [1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 1, 0]
    assert age_bucket_count(0.0) == 1 and age_bucket_count(DAY) == 2 and age_bucket_count(14.9 * DAY) == 4 and age_bucket_count(15 * DAY) == 5


def test_calendar_adds_the_hour_of_the_day_and_the_day_of_the_week():
    encoder = TimeEncoder(R, buckets=3, dim=8, calendar=True)
    monday = pd.Timestamp("2024-01-01 13:30", tz="UTC").timestamp()  # a Monday, 13h
    t = torch.tensor([0.0, monday, math.nan], dtype=torch.float64)  # 1970-01-01 00:00 was a Thursday
    expected = torch.stack([
        encoder.age.weight[3] + encoder.hour.weight[0 + 1] + encoder.weekday.weight[3 + 1],  # 31 years before R: the oldest
        encoder.age.weight[1] + encoder.hour.weight[13 + 1] + encoder.weekday.weight[0 + 1],  # after R: age 0
        encoder.age.weight[0] + encoder.hour.weight[0] + encoder.weekday.weight[0],  # missing: row 0 of each
    ])
    torch.testing.assert_close(encoder(t), expected)
    assert encoder(torch.tensor([R - 0.5 * DAY])).shape == (1, 8)  # float32 input is widened, not refused


def test_time_columns_are_read_from_seconds_datetimes_and_date_strings():
    spec = FeatureSpec("released", "time")
    seconds = times_of(pd.Series([86400.0, None, 0]), spec, "items.csv")
    np.testing.assert_array_equal(seconds, [86400.0, np.nan, 0.0])
    dates = times_of(pd.Series(["1970-01-02", None, "1970-01-01T00:00:10Z"], dtype=object), spec, "items.csv")
    np.testing.assert_array_equal(dates, [86400.0, np.nan, 10.0])
    datetimes = times_of(pd.Series(pd.to_datetime(["1970-01-02", None])), spec, "items.csv")
    np.testing.assert_array_equal(datetimes, [86400.0, np.nan])
    with pytest.raises(ValueError, match=r"items.csv: time column 'released' has the value 'soon' at row 1, which is neither Unix seconds nor a date"):
        times_of(pd.Series(["1970-01-02", "soon"], dtype=object), spec, "items.csv")
    with pytest.raises(ValueError, match=r"items.csv: column 'released' has the value 1700000000000.0 at row 0, beyond 1e\+11 Unix seconds"):
        times_of(pd.Series([1.7e12]), spec, "items.csv")


def test_fitting_takes_the_latest_time_as_reference_and_round_trips():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "released": [R - 20 * DAY, R, None]})
    fitted = fit_feature(FeatureSpec("released", "time", calendar=True), items, "items.csv", Vocabulary.fit(["a", "b", "c"]))
    assert fitted.state == {"reference": R, "buckets": 5}  # 20 days: 1 + floor(log2(21)) = 5
    again = FittedFeature.from_json(json.loads(json.dumps(fitted.to_json())))
    assert again.spec == fitted.spec and again.state == fitted.state
    torch.testing.assert_close(again.transform(items, "items.csv"), torch.tensor([R - 20 * DAY, R, math.nan], dtype=torch.float64),
                               equal_nan=True)
    with pytest.raises(ValueError, match=r"items.csv: time column 'released' has no values in the train split"):
        fit_feature(FeatureSpec("released", "time"), items.assign(released=None), "items.csv", None)


def test_request_time_reads_no_column_and_needs_the_interactions_times():
    with pytest.raises(ValueError, match=r"feature 'asked' of kind request_time reads no column \(column='ts'\)"):
        FeatureSpec("asked", "request_time", column="ts")
    with pytest.raises(ValueError, match=r"request_time feature 'asked' must be on the query side"):
        Schema.from_config({"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "asked", "kind": "request_time"}]})
    schema = Schema.from_config({"query": [{"name": "asked", "kind": "request_time"}], "candidate": [{"name": "item_id", "kind": "id"}]})
    users, items = pd.DataFrame({"user_id": ["u"]}), pd.DataFrame({"item_id": ["i"]})
    names = {"interactions": "clicks.parquet", "users": "users.csv", "items": "items.csv"}
    with pytest.raises(ValueError, match=r"feature 'asked' of kind request_time is fitted on the training interactions' times, and this "
                                         r"source \(interactions: clicks.parquet\) does not give them"):
        Preprocessor.fit_with_ids(schema, Vocabulary.fit(["u"]), Vocabulary.fit(["i"]), users, items, names)
    with pytest.raises(ValueError, match=r"needs the interactions' 'timestamp' column; clicks.parquet has none"):
        Preprocessor.fit(schema, pd.DataFrame({"user_id": ["u"], "item_id": ["i"]}), users, items, names)


FEATURES = {
    "query": [{"name": "user_id", "kind": "id"}, {"name": "age", "kind": "numeric"}, {"name": "asked", "kind": "request_time", "calendar": True}],
    "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genres", "kind": "multi_hot"}, {"name": "launched", "kind": "time"}],
}


def _own_tables_with_launch_dates(root):
    paths = readme_data.write_own_tables(root)
    items = pd.read_csv(paths["items"])
    items["launched"] = pd.to_datetime(1_699_000_000 + 3600 * np.arange(len(items)), unit="s").strftime("%Y-%m-%d %H:%M:%S")
    items.loc[3, "launched"] = None  # a missing launch date: the missing row
    items.to_csv(paths["items"], index=False)
    return paths


@pytest.fixture
def time_datamodule(tmp_path):
    paths = _own_tables_with_launch_dates(tmp_path)
    source = TableSource(str(paths["clicks"]), str(paths["users"]), str(paths["items"]), user_id="uid", item_id="iid", timestamp="ts")
    dm = TwoTowerDataModule(source, FEATURES, "temporal", batch_size=64)
    dm.setup()
    return dm


def test_training_rows_read_their_interactions_time_and_evaluation_the_data_known_before_the_split(time_datamodule):
    dm = time_datamodule
    data, rows = dm.prepared, torch.tensor([7, 0, 31])
    batch = dm.train_batch(rows)
    interactions = data.tables.interactions
    train = interactions[dm.split(interactions).to_numpy() == "train"]
    users, items = data.train_pairs[rows].unbind(1)
    for position, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        own = train[(train["user_id"] == data.user_rows[u]) & (train["item_id"] == data.item_rows[i])]["timestamp"]
        assert batch.query["asked"][position].item() == own.item()
    assert batch.query["asked"].dtype == torch.float64
    fitted = data.preprocessor.query["asked"]
    assert fitted.state["reference"] == train["timestamp"].max()  # ages count back from the latest training time
    test = dm.eval_batch(data.eval_users["test"][:5], "test")
    known_end = interactions[dm.split(interactions).to_numpy() != "test"]["timestamp"].max()
    assert test.query["asked"].tolist() == [known_end] * 5
    launched = data.items.columns["launched"]
    assert launched.dtype == torch.float64 and math.isnan(launched[3]) and launched[0] == 1_699_000_000.0


def test_a_streamed_source_refuses_a_request_time_naming_why(tmp_path):
    paths = readme_data.write_shards(tmp_path)
    source = ShardSource(str(paths["clicks"]), str(paths["users"]), str(paths["items"]), user_id="uid", item_id="iid", timestamp="ts")
    features = {"query": [{"name": "user_id", "kind": "id"}, {"name": "asked", "kind": "request_time"}], "candidate": [{"name": "item_id", "kind": "id"}]}
    with pytest.raises(ValueError, match=r"feature 'asked' of kind request_time is fitted on the training interactions' times, and this source"):
        TwoTowerDataModule(source, features, HashSplit(), batch_size=16).setup()


def test_serving_reads_the_request_time_from_now(tmp_path, compose_cfg):
    paths = _own_tables_with_launch_dates(tmp_path)
    cfg = compose_cfg("data=tables", f"data.source.interactions={paths['clicks']}", f"data.source.users={paths['users']}",
                      f"data.source.items={paths['items']}", "data.batch_size=128", "logger=none", "trainer.max_epochs=2", "test=false",
                      "trainer.enable_progress_bar=false", "callbacks=none")
    cfg.data.features = OmegaConf.create(FEATURES)
    _, objects = train(cfg)
    artifact = export(export_config(tmp_path, tmp_path / "artifact", "flat"))
    retriever = Retriever.load(artifact)
    model, _, _ = load_checkpoint(find_checkpoint(tmp_path))
    data = objects["datamodule"].serving_data()
    end = float(data.log.event_times.max())
    assert retriever.data_end == end
    users = data.user_ids[:4].tolist()
    rows = torch.arange(4)

    def expected_queries(now: float) -> np.ndarray:
        inputs = query_inputs(objects["datamodule"].prepared.preprocessor.query, {k: v[rows] for k, v in data.user_features.items()}, {},
                              objects["datamodule"].prepared.item_vocab_index.cpu(), lambda r: {k: v[r] for k, v in data.item_features.items()}, now)
        assert inputs["asked"].tolist() == [now] * 4
        with torch.no_grad():
            return model.encode_query(inputs).numpy()

    # Served without ``now``: the query at the data end; with ``now``: the query at that time, a different vector.
    default, earlier = retriever.recommend(users, k=5), retriever.recommend(users, k=5, now=end - 9 * DAY)
    at_end, nine_days_before = expected_queries(end), expected_queries(end - 9 * DAY)
    assert not np.allclose(at_end, nine_days_before, atol=1e-4)
    scores = lambda q, result: (q[:, None, :] * retriever.item_vectors[[[retriever._item_row[i] for i in r] for r in result.item_ids]]).sum(-1)  # noqa: E731
    np.testing.assert_allclose(default.scores, scores(at_end, default), atol=1e-4)
    np.testing.assert_allclose(earlier.scores, scores(nine_days_before, earlier), atol=1e-4)
    signature = {i["name"]: i for i in retriever.artifact.manifest["serving_signature"]["inputs"]}
    assert signature["asked"]["dtype"] == "float64" and signature["asked"]["in_tower"]["calendar"] is True
