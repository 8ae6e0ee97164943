"""Each built-in feature kind: fit -> transform -> JSON -> transform, its empty input, its encoder, its serving input."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.data.vocab import Vocabulary
from twotower.features import FeatureSpec, FittedFeature, Preprocessor, build_encoder, fit_feature, kind_of, registered_kinds
from twotower.features.history import history_inputs

ITEMS = pd.DataFrame({
    "item_id": ["a", "b", "c", "d"],
    "genre": ["rock", "jazz", "rock", None],
    "tags": ["x|y", "y", None, "z|x|y"],
    "title": ["Blue train", "Kind of blue", None, "Train 1984"],
    "price": [1.0, 3.0, 7.0, np.nan],
    "vector": [np.array([1.0, 0.0]), np.array([0.0, 1.0]), None, np.array([0.5, 0.5])],
    "launched": ["2024-01-01", "2024-03-01 12:00", None, "2024-02-01"],
})
# One spec per table kind, each with the settings it reads; fitted on ITEMS.
SPECS = [
    FeatureSpec("item_id", "id"),
    FeatureSpec("genre", "categorical", prefix=2),
    FeatureSpec("tags", "multi_hot", separator="|", max_len=2),
    FeatureSpec("title", "text", max_len=3),
    FeatureSpec("hashed", "text", column="title", hash_buckets=50),
    FeatureSpec("price", "numeric", missing="mean", transform="log1p"),
    FeatureSpec("vector", "dense", missing="zero"),
    FeatureSpec("launched", "time", calendar=True),
]
IDS = Vocabulary.fit(["a", "b", "c", "a"])  # d is an item unseen in training


def fitted(spec: FeatureSpec) -> FittedFeature:
    return fit_feature(spec, ITEMS, "items.csv", IDS)


def test_the_built_in_kinds_are_registered_in_order():
    assert registered_kinds() == ("id", "categorical", "multi_hot", "numeric", "text", "dense", "history", "time", "request_time")


def test_each_kind_transforms_as_written():
    out = {spec.name: fitted(spec).transform(ITEMS, "items.csv") for spec in SPECS}
    assert out["item_id"].tolist() == [1, 2, 3, 0]  # a (twice in training) first; d unseen: out of vocabulary
    assert out["genre"].tolist() == [1, 2, 1, 0]  # "ro" x2, "ja"; missing -> 0
    assert out["tags"].tolist() == [[2, 1], [1, 0], [0, 0], [3, 2]]  # y=1 (x3), x=2, z=3; cut to max_len 2
    assert out["title"].tolist() == [[1, 2, 0], [4, 5, 1], [0, 0, 0], [2, 3, 0]]  # blue=1, train=2 (twice each), 1984, kind, of
    assert out["hashed"][2].tolist() == [0, 0, 0] and (out["hashed"][0, :2] > 0).all()
    # Numbers stay raw (the encoder standardises); a missing price is the raw value of the train mean of log1p(price).
    np.testing.assert_allclose(out["price"].numpy(), [1.0, 3.0, 7.0, np.expm1(np.log1p([1.0, 3.0, 7.0]).mean())], rtol=1e-6)
    assert out["vector"].tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5]]
    # Times stay raw Unix seconds (the encoder buckets their age); d's launch is out of training's items, so fitting ignores it.
    np.testing.assert_array_equal(out["launched"].numpy(), [1704067200.0, 1709294400.0, np.nan, 1706745600.0])


def test_the_numeric_encoder_standardises_clips_to_the_training_range_and_reads_nan_as_the_mean():
    feature = fitted(FeatureSpec("price", "numeric", missing="mean", transform="log1p"))  # train prices 1, 3, 7
    encoder = build_encoder(kind_of("numeric").encoder_spec(feature, Preprocessor({}, {}, Vocabulary(["u"]), IDS), 1, {}))
    logs = np.log1p([1.0, 3.0, 7.0])
    z = lambda x: (np.log1p(x) - logs.mean()) / logs.std()  # noqa: E731
    raw = torch.tensor([1.0, 3.0, 7.0, np.nan, 1000.0, 0.0, -5.0])
    # 1000 clips to the largest train price (7); 0 and -5 (log1p of a negative clamps to 0) to the smallest (1).
    expected = [z(1.0), z(3.0), z(7.0), 0.0, z(7.0), z(1.0), z(1.0)]
    np.testing.assert_allclose(encoder(raw).squeeze(-1).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_tower_config_without_the_numeric_standardisation_is_refused():
    with pytest.raises(ValueError, match=r"numeric feature 'age' has no 'standardise' entry in its tower config"):
        build_encoder({"name": "age", "kind": "numeric", "dim": 1})


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_fitted_state_round_trips_through_json(spec):
    before = fitted(spec)
    after = FittedFeature.from_json(json.loads(json.dumps(before.to_json())))
    assert after.spec == before.spec
    torch.testing.assert_close(after.transform(ITEMS, "items.csv"), before.transform(ITEMS, "items.csv"), equal_nan=True)


@pytest.mark.parametrize("spec", [*SPECS, FeatureSpec("history", "history", max_len=5)], ids=lambda s: s.name)
def test_empty_transform_and_encoder_agree_with_the_serving_input(spec):
    feature = fitted(spec)
    kind, served = kind_of(spec.kind), kind_of(spec.kind).serving_input(feature)
    assert served.name == spec.name and served.shape[0] is None and served.encoding
    empty = kind.empty(feature, 3)
    assert str(empty.dtype).removeprefix("torch.") == served.dtype and tuple(empty.shape) == (3, *served.shape[1:])
    if not kind.from_interactions:
        values = feature.transform(ITEMS, "items.csv")
        assert str(values.dtype).removeprefix("torch.") == served.dtype and tuple(values.shape) == (len(ITEMS), *served.shape[1:])
    preprocessor = Preprocessor({}, {}, Vocabulary(["u"]), IDS)
    encoder = build_encoder(kind.encoder_spec(feature, preprocessor, 4, {}))
    assert encoder(empty).shape == (3, encoder.out_dim)


def test_history_is_built_from_interactions_not_a_column():
    history = fitted(FeatureSpec("history", "history"))
    assert history.max_len == 50  # the default length
    with pytest.raises(ValueError, match="feature 'history' of kind history is not read from a table column"):
        history.transform(ITEMS, "items.csv")
    kind = kind_of("history")
    assert kind.from_interactions and kind.query_only and kind.shares_item_ids and not kind.identity
    assert kind_of("id").identity and not any(kind_of(k).identity for k in registered_kinds() if k != "id")


def test_history_inputs_by_item_id_and_through_the_item_tower():
    rows = torch.tensor([[3, 1, 0], [1, 4, 0]])  # catalogue rows + 1, 0 = empty slot
    item_vocab_index = torch.tensor([2, 0, 1, 3])  # catalogue row 1 is not in the id vocabulary
    titles = torch.tensor([[10, 11], [20, 21], [30, 31], [40, 41]])  # a candidate feature of each catalogue row
    by_id = history_inputs("h", rows, False, item_vocab_index, None)
    assert by_id.keys() == {"h"} and by_id["h"].tolist() == [[1, 2, 0], [2, 3, 0]]
    through = history_inputs("h", rows, True, item_vocab_index, lambda r: {"title": titles[r]})
    # Distinct rows + 1: 0 (padding), 1, 3, 4 -> catalogue rows 0 (clamped padding), 0, 2, 3.
    assert through["h"].tolist() == [[1, 2, 0], [2, 3, 0]]
    assert through["h.index"].tolist() == [[2, 1, 0], [1, 3, 0]]
    assert through["h.present"].tolist() == [[True, True, False], [True, True, False]]
    assert through["h.title"].tolist() == [[10, 11], [10, 11], [30, 31], [40, 41]]


def test_settings_of_another_kind_are_refused_naming_the_kinds_that_read_them():
    with pytest.raises(ValueError, match=r"feature 'age': separator='\|' needs kind multi_hot, not numeric"):
        FeatureSpec("age", "numeric", separator="|")
    with pytest.raises(ValueError, match=r"feature 'genre': max_len=3 needs kind multi_hot or text or history, not categorical"):
        FeatureSpec("genre", "categorical", max_len=3)
    with pytest.raises(ValueError, match=r"feature 'h': through_item_tower=True needs kind history, not text"):
        FeatureSpec("h", "text", through_item_tower=True)
    with pytest.raises(ValueError, match=r"feature 'price': transform='sqrt' is not one of null, log1p"):
        FeatureSpec("price", "numeric", transform="sqrt")
    with pytest.raises(ValueError, match=r"feature 'v': missing='drop' is not one of error, mean, zero"):
        FeatureSpec("v", "dense", missing="drop")
    with pytest.raises(ValueError, match=r"feature 't': hash_buckets=0 needs a positive count"):
        FeatureSpec("t", "text", hash_buckets=0)
    with pytest.raises(ValueError, match=r"unknown feature kind 'picture' \(kinds: id, categorical, multi_hot"):
        kind_of("picture")
