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


def _fit_with_counter(values, min_count=1):
    """The original Python-loop fit, the reference the vectorised one must equal."""
    from collections import Counter

    from twotower.data.vocab import _key

    counts = Counter(_key(v) for v in values if not _is_missing(v))
    return sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))


def _is_missing(value) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def test_vectorised_fit_and_lookups_equal_the_python_loops():
    import pandas as pd

    from twotower.data.vocab import _key

    rng = np.random.default_rng(0)
    pool = ["a", "b", "B", "é", "10", "9", 7, 7.0, 8.5, "7", None, float("nan"), pd.NA, np.int64(3), np.float32(2.0), "", " x"]
    values = [pool[i] for i in rng.integers(0, len(pool), 400)]
    for min_count in (1, 5, 30):
        vocab = Vocabulary.fit(values, min_count)
        assert vocab.values == _fit_with_counter(values, min_count)
        index = {v: i + 1 for i, v in enumerate(vocab.values)}
        expected = [index.get(_key(v), OOV) if not _is_missing(v) else OOV for v in values]
        assert vocab.lookup(values).tolist() == expected
        assert vocab.lookup(pd.Series(values, dtype=object)).tolist() == expected
    assert Vocabulary.fit([]).values == [] and Vocabulary(["a"]).lookup([]).tolist() == []
    lists = [[str(pool[i]) for i in rng.integers(0, len(pool), rng.integers(0, 6))] for _ in range(200)]
    vocab = Vocabulary.fit([t for lst in lists for t in lst], min_count=20)
    expected = np.zeros((len(lists), 3), dtype=np.int64)
    index = {v: i + 1 for i, v in enumerate(vocab.values)}
    for row, lst in enumerate(lists):
        idx = [i for i in (index.get(v, OOV) for v in lst) if i != OOV][:3]
        expected[row, : len(idx)] = idx
    np.testing.assert_array_equal(vocab.lookup_lists(lists, 3), expected)
