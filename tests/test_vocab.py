import numpy as np
import pytest

from twotower.data.vocab import OOV, Vocabulary, split_tags, tokenize


def test_fit_orders_by_frequency_then_value_and_reserves_zero():
    vocab = Vocabulary.fit(["b", "a", "b", "c", "a", "b", None, float("nan")])
    assert vocab.values == ["b", "a", "c"]
    assert len(vocab) == 4  # OOV row included
    assert vocab.lookup(["b", "a", "c", "zzz", None]).tolist() == [1, 2, 3, OOV, OOV]


def test_min_count_sends_rare_values_to_oov():
    vocab = Vocabulary.fit(["x", "x", "y"], min_count=2)
    assert vocab.lookup(["x", "y"]).tolist() == [1, OOV]


def test_integral_floats_and_ints_are_one_key():
    vocab = Vocabulary.fit([7, 8])
    assert vocab.lookup([7.0, "8", 9]).tolist() == [1, 2, OOV]


def test_lookup_lists_pads_truncates_and_drops_unknown():
    vocab = Vocabulary(["a", "b", "c"])
    out = vocab.lookup_lists([["a", "zz", "b"], [], ["c", "b", "a", "c"]], max_len=3)
    np.testing.assert_array_equal(out, [[1, 2, 0], [0, 0, 0], [3, 2, 1]])


def test_json_round_trip():
    vocab = Vocabulary.fit(["u1", "u2", "u2"])
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_duplicate_values_rejected():
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])


def test_tokenize_and_tags():
    assert tokenize("Toy Story (1995)") == ["toy", "story", "1995"]
    assert tokenize(None) == []
    assert split_tags("Action|Comedy", "|") == ["Action", "Comedy"]
    assert split_tags(["x", "y"], None) == ["x", "y"]
    assert split_tags(float("nan"), "|") == []
