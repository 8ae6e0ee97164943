"""Fuzzing the Retriever's API with hypothesis: random argument types and values, seeded.

Each call either returns the correct result (brute force over the loaded vectors, or the same call
with its arguments written canonically, as ``test_retriever`` checks against brute force), or raises
ValueError, TypeError or KeyError naming an argument that the documented contract says is wrong.
The contract, restated here from the docstrings: ids are strings or numbers (7, 7.0 and "7" one id;
None/NaN missing; at most MAX_ID_CHARS characters of Unicode text) in a list, tuple, 1-d array,
Series or Index, never a bare string; ``k`` is an int >= 1, capped at the catalogue; flags are bools;
``half_life`` a finite number > 0; ``rerank`` None or a Rerank fetching at least k.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.export_fixtures import trained_and_exported
from twotower import Retriever
from twotower.artifact import MAX_ID_CHARS
from twotower.data.vocab import _key
from twotower.rerank import Rerank

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MISSING = "<missing>"
RERANKS = [Rerank("mmr", fetch=50, trade_off=0.5), Rerank("dpp", fetch=20, trade_off=0.3), Rerank("none", fetch=300, trade_off=1.0)]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return Retriever.load(trained_and_exported(tmp_path_factory.getbasetemp() / "export-shared")[1])


# ---------------------------------------------------------------------- the contract, as a model
def model_id(value):
    """The key of one id, MISSING, or the exception type it must raise."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, float, np.integer, np.floating)):
        return TypeError
    key = str(_key(value))
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return ValueError
    return ValueError if len(key) > MAX_ID_CHARS else key


def is_list(value) -> bool:
    return isinstance(value, (list, tuple, pd.Series, pd.Index)) or (isinstance(value, np.ndarray) and value.ndim > 0)


def model_ids(value):
    """The keys of an id list, or the exception type of its first fault."""
    if not is_list(value):
        return TypeError
    keys = [model_id(v) for v in value]
    return next((k for k in keys if k in (TypeError, ValueError)), keys)


def model_k(k, available: int):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        return TypeError
    return ValueError if k < 1 else int(min(k, available))


def faults(**models) -> dict[str, type]:
    """The arguments whose model is an exception type, with that type."""
    return {name: m for name, m in models.items() if m in (TypeError, ValueError)}


def refused_as_expected(err: Exception, expected: dict[str, type]) -> bool:
    """An error of the type one faulty argument calls for, naming that argument."""
    return any(isinstance(err, kind) and name in str(err) for name, kind in expected.items())


# ---------------------------------------------------------------------- strategies
def ids_of(known: list[str]):
    numeric = [int(i) for i in known if i.isdigit()]
    element = st.one_of(
        st.sampled_from(known), st.sampled_from(numeric), st.sampled_from(numeric).map(float), st.sampled_from(numeric).map(np.int64),
        st.text(max_size=4), st.integers(-5, 10**4), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
        st.binary(max_size=2), st.just("u" * (MAX_ID_CHARS + 1)), st.just("\ud800"), st.just(pd.NA), st.lists(st.text(max_size=1), max_size=2),
    )
    lists = st.lists(element, max_size=4)
    valid = st.lists(st.one_of(st.sampled_from(known), st.sampled_from(numeric)), min_size=1, max_size=4)  # half the draws: mostly right
    return element, st.one_of(
        valid, valid.map(tuple), valid.map(np.array), st.lists(st.sampled_from(known), min_size=1, max_size=3).map(pd.Series),
        lists, lists.map(tuple), lists.map(lambda values: pd.Series(values, dtype=object)),
        st.lists(st.sampled_from(known), max_size=4).map(np.array), st.lists(st.sampled_from(numeric), min_size=1, max_size=3).map(np.array),
        st.text(max_size=4), st.integers(), st.none(), st.sets(st.text(max_size=2), max_size=2), st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
    )


# Each with as many right draws as wrong ones, so that the fuzz reaches results as often as refusals. A k far beyond
# the catalogue stays 10**4 here: test_retriever_arguments checks 10**9 in a memory-limited process.
KS = st.one_of(st.integers(1, 30), st.integers(1, 30).map(np.int64), st.integers(1, 250), st.just(10**4),
               st.integers(-3, 0), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2), st.none())
FLAGS = st.one_of(st.booleans(), st.booleans(), st.just(np.bool_(False)), st.integers(0, 1), st.none(), st.text(max_size=1))
RERANK = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(RERANKS), st.text(max_size=3), st.integers(), st.just({"method": "mmr"}))
HALF_LIVES = st.one_of(st.floats(1e-3, 1e12), st.integers(1, 10**7), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 0),
                       st.booleans(), st.text(max_size=2), st.none())


# ---------------------------------------------------------------------- brute force
def top_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best of ``scores`` (N,), best first, padded with -inf: what a correct answer's scores are."""
    best = np.sort(scores)[::-1][:k]
    return np.concatenate([best, np.full(k - len(best), -np.inf)]).astype(np.float32)


def same_answer(got_ids: np.ndarray, got_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int) -> bool:
    """``got`` is a correct top-k of ``scores`` over ``ids``: the scores agree, and every id scoring above the k-th is in it."""
    expected = top_scores(scores, k)
    if got_scores.shape != (k,) or not np.allclose(got_scores, expected, atol=1e-4):
        return False
    sure = scores > expected[-1] + 1e-4 if np.isfinite(expected[-1]) else np.isfinite(scores)
    return set(ids[sure]) <= set(got_ids[np.isfinite(got_scores)])


def outcome(counter: Counter, call, expected_faults: dict[str, type], check) -> None:
    """Run ``call``; a refusal must be one ``expected_faults`` calls for, a result must pass ``check``."""
    try:
        got = call()
    except (TypeError, ValueError, KeyError) as err:
        assert refused_as_expected(err, expected_faults), f"refused with {type(err).__name__}({err}), expected {expected_faults or 'a result'}"
        counter["refused as the contract says"] += 1
        return
    assert not expected_faults, f"returned a result, but the contract refuses {expected_faults}"
    check(got)
    counter["correct result"] += 1


def reached_both(counter: Counter) -> None:
    assert counter["correct result"] >= 10 and counter["refused as the contract says"] >= 10, counter


# ---------------------------------------------------------------------- the fuzz
def test_recommend(retriever):
    counter = Counter()
    _, users = ids_of(retriever.user_ids.tolist()[:50])
    vectors = np.asarray(retriever.item_vectors)
    n = len(vectors)

    @FUZZ
    @given(users=users, k=KS, exclude_seen=FLAGS, rerank=RERANK)
    def fuzz(users, k, exclude_seen, rerank):
        keys, k_model = model_ids(users), model_k(k, n)
        expected = faults(users=keys, k=k_model, exclude_seen=None if isinstance(exclude_seen, (bool, np.bool_)) else TypeError,
                          rerank=None if rerank is None or isinstance(rerank, Rerank) else TypeError)
        if isinstance(rerank, Rerank) and isinstance(k_model, int) and rerank.fetch < k_model:
            expected["rerank"] = ValueError
        if not expected and any(key == MISSING or key not in retriever._user_row for key in keys):
            expected["users"] = KeyError

        def check(got):
            if rerank is not None:  # the same call, written canonically
                canonical = retriever.recommend([str(key) for key in keys], k=k_model, exclude_seen=bool(exclude_seen), rerank=rerank)
                assert got.item_ids.tolist() == canonical.item_ids.tolist() and np.array_equal(got.scores, canonical.scores)
                return
            rows = [retriever._user_row[key] for key in keys]
            queries = retriever.encode_queries({name: torch.from_numpy(a[rows]) for name, a in retriever.user_features.items()})
            assert got.item_ids.shape == (len(keys), k_model)
            for q, row in enumerate(rows):
                scores = vectors @ queries[q]
                if exclude_seen:
                    scores[retriever._seen_of(row)] = -np.inf
                assert same_answer(got.item_ids[q], got.scores[q], retriever.item_ids, scores, k_model), (users, k)

        outcome(counter, lambda: retriever.recommend(users, k=k, exclude_seen=exclude_seen, rerank=rerank), expected, check)

    fuzz()
    reached_both(counter)


def test_recommend_from_history(retriever):
    counter = Counter()
    element, lists = ids_of(retriever.item_ids.tolist()[:50])
    visitors = st.one_of(lists, st.lists(lists, max_size=3), st.lists(st.one_of(lists, element), min_size=2, max_size=3))
    n = len(retriever.item_ids)

    @FUZZ
    @given(item_ids=visitors, k=KS, rerank=RERANK)
    def fuzz(item_ids, k, rerank):
        k_model = model_k(k, n)
        if not is_list(item_ids):
            histories = TypeError
        else:
            nested = [is_list(h) for h in item_ids]
            if any(nested) and not all(nested):
                histories = TypeError
            else:
                per_visitor = [model_ids(h) for h in item_ids] if nested and all(nested) else [model_ids(item_ids)]
                histories = next((h for h in per_visitor if h in (TypeError, ValueError)), per_visitor)
        expected = faults(item_ids=histories, k=k_model, rerank=None if rerank is None or isinstance(rerank, Rerank) else TypeError)
        if isinstance(rerank, Rerank) and isinstance(k_model, int) and rerank.fetch < k_model:
            expected["rerank"] = ValueError

        def check(got):
            canonical = [[key for key in h if key != MISSING] for h in histories]
            again = retriever.recommend_from_history(canonical, k=k_model, rerank=rerank)
            assert got.item_ids.tolist() == again.item_ids.tolist() and np.array_equal(got.scores, again.scores)
            assert got.item_ids.shape == (len(canonical), k_model)
            for row, history in enumerate(canonical):  # the viewed items are never recommended back
                assert not set(history) & set(got.item_ids[row]), (item_ids, got.item_ids[row])

        outcome(counter, lambda: retriever.recommend_from_history(item_ids, k=k, rerank=rerank), expected, check)

    fuzz()
    reached_both(counter)


def test_similar_items(retriever):
    counter = Counter()
    element, lists = ids_of(retriever.item_ids.tolist()[:50])
    vectors = np.asarray(retriever.item_vectors)
    n = len(vectors)

    @FUZZ
    @given(item_ids=st.one_of(element, lists), k=KS)
    def fuzz(item_ids, k):
        keys = model_ids(item_ids) if is_list(item_ids) else model_id(item_ids)
        keys = [keys] if isinstance(keys, str) else keys
        k_model = model_k(k, n)
        expected = faults(item_ids=keys, k=k_model)
        if not expected and any(key == MISSING or key not in retriever._item_row for key in keys):
            expected["item_ids"] = KeyError

        def check(got):
            assert got.item_ids.shape == (len(keys), k_model)
            for q, key in enumerate(keys):
                row = retriever._item_row[key]
                scores = vectors @ vectors[row]
                scores[row] = -np.inf
                assert same_answer(got.item_ids[q], got.scores[q], retriever.item_ids, scores, k_model), (item_ids, k)

        outcome(counter, lambda: retriever.similar_items(item_ids, k=k), expected, check)

    fuzz()
    reached_both(counter)


def test_popular_and_trending(retriever):
    counter = Counter()
    items, times = retriever._events["items"], retriever._events["times"]
    n = len(retriever.item_ids)

    @FUZZ
    @given(k=KS, half_life=HALF_LIVES, trending=st.booleans())
    def fuzz(k, half_life, trending):
        k_model = model_k(k, n)
        valid_half_life = (not isinstance(half_life, (bool, np.bool_)) and isinstance(half_life, (int, float))
                           and math.isfinite(half_life) and half_life > 0)
        wrong_type = isinstance(half_life, (bool, str, type(None)))
        expected = faults(k=k_model, half_life=None if valid_half_life or not trending else TypeError if wrong_type else ValueError)

        def check(got):
            weights = np.exp2(-(times.max() - times) / half_life) if trending else np.ones_like(times)
            counts = np.bincount(items, weights=weights, minlength=n).astype(np.float32)
            assert same_answer(got.item_ids[0], got.scores[0], retriever.item_ids, counts, k_model), (k, half_life)

        call = (lambda: retriever.trending(k, half_life=half_life)) if trending else (lambda: retriever.popular(k))
        outcome(counter, call, expected, check)

    fuzz()
    reached_both(counter)
