import pytest

from twotower.data.schema import Schema
from twotower.features import FeatureSpec

FEATURES = {
    "query": [{"name": "user_id", "kind": "id"}, {"name": "age", "kind": "numeric"}],
    "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genres", "kind": "multi_hot", "separator": "|"}],
}


def test_from_config_and_id_switch():
    schema = Schema.from_config(FEATURES)
    assert [s.name for s in schema.query] == ["user_id", "age"]
    content_only = Schema.from_config(FEATURES, use_ids=False)
    assert [s.name for s in content_only.query] == ["age"]
    assert [s.name for s in content_only.candidate] == ["genres"]


def test_unknown_kind_names_feature_and_kinds():
    with pytest.raises(ValueError, match="feature 'x' has unknown kind 'picture'.*multi_hot"):
        FeatureSpec(name="x", kind="picture")


def test_bad_entries_are_named():
    with pytest.raises(ValueError, match="needs both 'name' and 'kind'"):
        Schema.from_config({"query": [{"name": "a"}], "candidate": FEATURES["candidate"]})
    with pytest.raises(ValueError, match="history feature 'h' must be on the query side"):
        Schema.from_config({"query": FEATURES["query"], "candidate": [{"name": "h", "kind": "history"}]})
    with pytest.raises(ValueError, match="repeat the name"):
        Schema.from_config({"query": FEATURES["query"] * 2, "candidate": FEATURES["candidate"]})
    with pytest.raises(ValueError, match="feature 'age' on the query side: .*unexpected keyword"):
        Schema.from_config({"query": [{"name": "age", "kind": "numeric", "colour": 1}], "candidate": FEATURES["candidate"]})
    with pytest.raises(ValueError, match="the query tower has no features"):
        Schema.from_config({"query": [{"name": "user_id", "kind": "id"}], "candidate": FEATURES["candidate"]}, use_ids=False)
