"""The Retriever's freshness knob (``max_age``, ``freshness_boost``, ``now``) on the exported test artifact,
its log replaced by a hand-built one: every item first seen on day 0, items 0..29 first seen on day 95,
the log ending on day 100. Expected lists are the unfiltered, unboosted ranking filtered or re-scored by hand."""
import numpy as np
import pytest

from tests.export_fixtures import trained_and_exported
from twotower import Retriever

DAY = 86400.0
YOUNG = 30  # items 0..29


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    retriever = Retriever.load(trained_and_exported(tmp_path_factory.mktemp("export"))[1])
    n = len(retriever.item_ids)
    items = np.concatenate([np.arange(YOUNG, n), np.arange(YOUNG), [0]])
    times = np.concatenate([np.zeros(n - YOUNG), np.full(YOUNG, 95 * DAY), [100 * DAY]])
    retriever._set_events({"items": items, "times": times})
    return retriever


def young_ids(retriever):
    return set(retriever.item_ids[:YOUNG])


def full_ranking(retriever, user="3"):
    everything = retriever.recommend([user], k=len(retriever.item_ids))
    keep = everything.item_ids[0] != ""
    return everything.item_ids[0][keep], everything.scores[0][keep]


def test_max_age_drops_exactly_the_old_items_and_still_returns_k(retriever):
    ids, _ = full_ranking(retriever)
    got = retriever.recommend(["3"], k=10, max_age=10 * DAY)  # young: 5 days old; the rest: 100
    expected = [i for i in ids if i in young_ids(retriever)][:10]
    assert len(expected) == 10  # enough young items outside the user's seen ones
    assert got.item_ids[0].tolist() == expected
    # A limit above every age drops nothing.
    assert retriever.recommend(["3"], k=10, max_age=101 * DAY).item_ids[0].tolist() == ids[:10].tolist()


def test_the_boost_adds_a_halving_bonus_to_the_score(retriever):
    ids, scores = full_ranking(retriever)
    # Half-life 5 days: a young item (5 days old) gets 0.3 * 0.5 = 0.15, an old one 0.3 * 0.5 ** 20 ~ 3e-7.
    bonus = np.where(np.isin(ids, list(young_ids(retriever))), 0.3 * 0.5, 0.3 * 0.5**20)
    boosted = scores + bonus
    order = np.argsort(-boosted, kind="stable")[:10]
    got = retriever.recommend(["3"], k=10, freshness_boost=0.3, freshness_half_life=5 * DAY)
    assert got.item_ids[0].tolist() == ids[order].tolist()
    np.testing.assert_allclose(got.scores[0], boosted[order], rtol=1e-5, atol=1e-6)
    assert got.item_ids[0].tolist() != ids[:10].tolist()  # the boost did reorder the list
    # A large boost puts the young items first, in their own score order.
    first = retriever.recommend(["3"], k=5, freshness_boost=10.0).item_ids[0].tolist()
    assert first == [i for i in ids if i in young_ids(retriever)][:5]


def test_now_is_overridable(retriever):
    default = retriever.recommend(["3"], k=10, max_age=10 * DAY).item_ids[0].tolist()
    # On day 200 the young items are 105 days old, the rest 200: a 110-day limit keeps what a 10-day one kept on day 100.
    assert retriever.recommend(["3"], k=10, max_age=110 * DAY, now=200 * DAY).item_ids[0].tolist() == default
    # ... and a 10-day limit keeps nothing: rows padded with "" and -inf.
    nothing = retriever.recommend(["3"], k=10, max_age=10 * DAY, now=200 * DAY)
    assert (nothing.item_ids == "").all() and np.isneginf(nothing.scores).all()
    # On day 50 the young items are not seen yet (age 0), the rest 50 days old.
    assert retriever.recommend(["3"], k=10, max_age=10 * DAY, now=50 * DAY).item_ids[0].tolist() == default


def test_a_visitors_history_takes_the_same_knob(retriever):
    history = list(retriever.item_ids[[40, 41]])
    everything = retriever.recommend_from_history(history, k=len(retriever.item_ids))
    ids = everything.item_ids[0][everything.item_ids[0] != ""]
    got = retriever.recommend_from_history(history, k=10, max_age=10 * DAY)
    assert got.item_ids[0].tolist() == [i for i in ids if i in young_ids(retriever)][:10]
    assert retriever.recommend_from_history(history, k=5, freshness_boost=10.0).item_ids[0].tolist() == got.item_ids[0][:5].tolist()
    # A visitor the towers know nothing of gets the popular items, here only the young ones.
    popular = [i for i in retriever.popular(len(retriever.item_ids)).item_ids[0] if i in young_ids(retriever)]
    assert retriever.recommend_from_history(["never-seen"], k=4, max_age=10 * DAY).item_ids[0].tolist() == popular[:4]
    with pytest.raises(ValueError, match=r"max_age=0 must be a finite number > 0"):
        retriever.recommend_from_history(history, k=5, max_age=0)


def test_an_added_item_is_new_to_the_filter(tmp_path_factory):
    fresh = Retriever.load(trained_and_exported(tmp_path_factory.mktemp("export"))[1])
    new = fresh.items.iloc[[0]].assign(item_id="new-1")
    fresh.add_items(new)
    # A day past the log's end every logged item is at least a day old; the added item, never interacted
    # with, is age 0: a one-hour limit keeps it alone.
    got = fresh.recommend(["3"], k=3, max_age=3600.0, now=float(fresh._events["times"].max()) + DAY)
    assert got.item_ids[0].tolist() == ["new-1", "", ""]


@pytest.mark.parametrize(("arguments", "error", "match"), [
    ({"max_age": 0}, ValueError, r"max_age=0 must be a finite number > 0"),
    ({"max_age": "7"}, TypeError, r"max_age must be a positive number, got str '7'"),
    ({"freshness_boost": -0.5}, ValueError, r"freshness_boost=-0.5 must be at least 0"),
    ({"freshness_boost": float("nan")}, ValueError, r"freshness_boost=nan must be a finite number"),
    ({"freshness_half_life": 0.0}, ValueError, r"freshness_half_life=0.0 must be a finite number > 0"),
    ({"now": float("inf")}, ValueError, r"now=inf must be a finite number"),
    ({"now": True}, TypeError, r"now must be a finite number, got bool True"),
])
def test_bad_freshness_arguments_are_refused_naming_the_argument(retriever, arguments, error, match):
    with pytest.raises(error, match=match):
        retriever.recommend(["3"], k=5, **arguments)
