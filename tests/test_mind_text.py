"""Hashed text tokens: words first seen after training (fresh news) still get an embedding row."""
import pandas as pd
import pytest

from twotower.data.schema import Schema
from twotower.features import FeatureSpec, Preprocessor


def test_hashed_tokens_are_stable_ids_and_cover_unseen_words():
    schema = Schema.from_config({
        "query": [{"name": "user_id", "kind": "id"}],
        "candidate": [{"name": "title", "kind": "text", "hash_buckets": 1000, "max_len": 4}, {"name": "plain", "kind": "text", "column": "title"}],
    })
    train = pd.DataFrame({"user_id": ["u"], "item_id": ["a"]})
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["Storm snow", "Xylophone storm"]})
    names = {"users": "users", "items": "items"}
    pre = Preprocessor.fit(schema, train, pd.DataFrame({"user_id": ["u"]}), items, names)
    assert pre.candidate["title"].cardinality == 1001
    columns = pre.transform("candidate", items, "items")
    # 1 + crc32(word) % 1000: storm -> 414, snow -> 300, xylophone -> 367 (unseen in training, still kept).
    assert columns["title"].tolist() == [[414, 300], [367, 414]]  # max_len: the longest train title (2)
    assert columns["plain"].tolist() == [[2, 1], [2, 0]]  # vocabulary snow=1, storm=2 drops the unseen word
    again = Preprocessor.from_json(pre.to_json()).transform("candidate", items, "items")
    assert again["title"].tolist() == columns["title"].tolist()


def test_hash_buckets_only_for_text():
    with pytest.raises(ValueError, match="hash_buckets=10 needs kind text"):
        FeatureSpec(name="genre", kind="categorical", hash_buckets=10)
