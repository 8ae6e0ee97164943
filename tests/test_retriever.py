"""The Retriever on a real exported artifact, and the re-ranking stage on hand-computed examples."""
import numpy as np
import pandas as pd
import pytest

from tests.export_fixtures import trained_and_exported
from twotower import Retriever
from twotower.rerank import Rerank, dpp, mmr
from twotower.show_recommendations import format_recommendations


@pytest.fixture(scope="session")
def retriever(tmp_path_factory):
    return Retriever.load(trained_and_exported(tmp_path_factory.mktemp("export"))[1])


@pytest.fixture
def fresh(retriever):
    """A retriever of its own, for tests that add items."""
    return Retriever.load(retriever.artifact.path)


def seen_ids(retriever, user):
    return set(retriever.item_ids[retriever._seen_of(retriever._user_row[user])])


def test_recommend_excludes_seen_items_and_batches_like_single_queries(retriever):
    batch = retriever.recommend(["3", "4", "5"], k=10)
    for row, user in enumerate(["3", "4", "5"]):
        single = retriever.recommend([user], k=10)
        assert single.item_ids[0].tolist() == batch.item_ids[row].tolist()
        assert not set(batch.item_ids[row]) & seen_ids(retriever, user)
        assert np.all(np.diff(batch.scores[row]) <= 1e-6)
    everything = retriever.recommend(["3"], k=200, exclude_seen=False)
    assert set(everything.item_ids[0]) == set(retriever.item_ids)  # nothing dropped without exclusion
    with pytest.raises(KeyError, match=r"unknown user id\(s\) \['nobody'\]"):
        retriever.recommend(["nobody"])


def test_raw_user_rows_match_ids_and_unknown_values_take_the_oov_path(retriever):
    stored = retriever.recommend(["3"], k=10)
    # A known user's row with its own profile gives the same list as its id.
    profile = retriever.user_features
    segment = retriever.preprocessor.query["segment"].vocab.values[profile["segment"][3] - 1]
    age = profile["age"][3]  # stored raw: the tower standardises it
    same = retriever.recommend(pd.DataFrame({"user_id": ["3"], "segment": [segment], "age": [age]}), k=10)
    assert same.item_ids.tolist() == stored.item_ids.tolist()
    # An unseen segment and an unknown user: OOV segment, empty history, still k items.
    unseen = retriever.recommend(pd.DataFrame({"user_id": ["new"], "segment": ["S-never-seen"], "age": [40]}), k=10)
    missing = retriever.recommend(pd.DataFrame({"user_id": ["new"], "segment": [None], "age": [40]}), k=10)
    assert unseen.item_ids.tolist() == missing.item_ids.tolist() and (unseen.item_ids != "").all()
    # A history column is read as item ids and its items are excluded.
    with_history = retriever.recommend(pd.DataFrame({"user_id": ["new"], "segment": ["S1"], "age": [30], "history": [["5", "7"]]}), k=10)
    assert not {"5", "7"} & set(with_history.item_ids[0])


def test_recommend_from_history_excludes_the_history_and_falls_back_to_popular(retriever):
    got = retriever.recommend_from_history([["5", "7", "11"], ["20"]], k=10)
    assert got.item_ids.shape == (2, 10)
    assert not {"5", "7", "11"} & set(got.item_ids[0]) and "20" not in got.item_ids[1]
    assert retriever.recommend_from_history(["5", "7", "11"], k=10).item_ids.tolist() == got.item_ids[:1].tolist()
    assert retriever.recommend_from_history([], k=5).item_ids.tolist() == retriever.popular(5).item_ids.tolist()
    unknown_only = retriever.recommend_from_history([["not-an-item"]], k=5)
    assert unknown_only.item_ids.tolist() == retriever.popular(5).item_ids.tolist()


def test_similar_items_are_the_nearest_vectors_without_the_item(retriever):
    vectors = np.asarray(retriever.item_vectors)
    got = retriever.similar_items(["0", "1"], k=5)
    for row, item in enumerate(["0", "1"]):
        scores = vectors @ vectors[int(item)]
        scores[int(item)] = -np.inf
        assert got.item_ids[row].tolist() == retriever.item_ids[np.argsort(-scores, kind="stable")[:5]].tolist()
    assert retriever.similar_items("0", k=5).item_ids.tolist() == got.item_ids[:1].tolist()


def test_popular_and_trending_come_from_the_interaction_log(retriever):
    items, times = retriever._events["items"], retriever._events["times"]
    counts = np.bincount(items, minlength=len(retriever.item_ids))
    top = retriever.popular(5)
    assert top.scores[0].tolist() == sorted(counts, reverse=True)[:5]
    assert top.item_ids[0].tolist() == retriever.item_ids[np.argsort(-counts, kind="stable")[:5]].tolist()
    # A half-life far beyond the log's span weighs every event ~1: the popular order.
    assert retriever.trending(5, half_life=1e15).item_ids.tolist() == top.item_ids.tolist()
    # A tiny half-life leaves only the latest event's item with weight 1.
    latest = retriever.item_ids[items[np.argmax(times)]]
    assert retriever.trending(1, half_life=1e-9).item_ids[0, 0] == latest
    with pytest.raises(ValueError, match="half_life=0 must be a finite number > 0"):
        retriever.trending(5, half_life=0)


def test_an_added_item_is_retrieved_by_a_user_whose_history_matches_its_content(fresh):
    top = fresh.recommend(["8"], k=1).item_ids[0, 0]
    content = fresh.items[fresh.items["item_id"] == top].drop(columns="item_id")
    new = content.assign(item_id="new-1")
    before = fresh.index.ntotal
    assert fresh.add_items(new).tolist() == ["new-1"]
    assert fresh.index.ntotal == before + 1 and fresh.item_ids[-1] == "new-1"
    got = fresh.recommend(["8"], k=2)
    assert set(got.item_ids[0]) == {top, "new-1"}  # content-only towers: same content, same vector
    assert fresh.similar_items("new-1", k=1).item_ids[0, 0] == top
    with pytest.raises(ValueError, match=r"repeats item id\(s\) \['new-1'\]"):
        fresh.add_items(new)
    with pytest.raises(ValueError, match=r"new items table has no column\(s\) \['price'\]"):
        fresh.add_items(pd.DataFrame({"item_id": ["new-2"], "genres": ["G1"], "title": ["g1w0"]}))


def test_mmr_takes_the_diverse_item_before_the_duplicate():
    scores = np.array([0.9, 0.85, 0.5])
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Step 2: duplicate 0.5*0.85 - 0.5*1 = -0.075 < diverse 0.5*0.5 - 0.5*0 = 0.25.
    assert mmr(scores, vectors, 3, trade_off=0.5).tolist() == [0, 2, 1]
    assert mmr(scores, vectors, 3, trade_off=1.0).tolist() == [0, 1, 2]


def test_greedy_dpp_adds_the_item_that_most_increases_the_log_determinant():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(8, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = rng.uniform(0, 1, 8)
    trade_off = 0.6
    r = np.exp(trade_off / (2 * (1 - trade_off)) * scores)
    kernel = r[:, None] * (vectors @ vectors.T) * r[None, :]
    chosen = dpp(scores, vectors, 4, trade_off).tolist()
    for step in range(4):  # brute force: each pick maximises log det of the chosen set's kernel
        prefix = chosen[:step]
        gains = {i: np.linalg.slogdet(kernel[np.ix_(prefix + [i], prefix + [i])])[1] for i in range(8) if i not in prefix}
        assert chosen[step] == max(gains, key=gains.get)
    # Duplicates add no volume: the second copy comes last.
    dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert dpp(np.array([0.9, 0.85, 0.5]), dup, 3, 0.5).tolist() == [0, 2, 1]
    assert dpp(scores, vectors, 4, 1.0).tolist() == np.argsort(-scores)[:4].tolist()


def test_rerank_in_the_retriever(retriever):
    plain = retriever.recommend(["3"], k=10)
    relevance_only = retriever.recommend(["3"], k=10, rerank=Rerank("mmr", fetch=50, trade_off=1.0))
    assert relevance_only.item_ids.tolist() == plain.item_ids.tolist()
    fetched = set(retriever.recommend(["3"], k=50).item_ids[0])
    for method in ("mmr", "dpp"):
        diverse = retriever.recommend(["3"], k=10, rerank=Rerank(method, fetch=50, trade_off=0.3))
        assert set(diverse.item_ids[0]) <= fetched and len(set(diverse.item_ids[0])) == 10
        vectors = np.asarray(retriever.item_vectors)
        rows = lambda ids: [int(i) for i in ids]  # noqa: E731 - synthetic ids are row numbers
        spread = lambda ids: (vectors[rows(ids)] @ vectors[rows(ids)].T)[np.triu_indices(10, 1)].mean()  # noqa: E731
        assert spread(diverse.item_ids[0]) < spread(plain.item_ids[0]), method
    with pytest.raises(ValueError, match="rerank method 'greedy' is not one of none, mmr, dpp"):
        Rerank("greedy")


def test_show_recommendations_prints_titles_and_genres(retriever):
    text = format_recommendations(retriever, ["1", "2"], k=3)
    blocks = text.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["user 1: top-3", "user 2: top-3"]
    first = retriever.recommend(["1"], k=3)
    title, genres = retriever.items.set_index("item_id").loc[first.item_ids[0, 0], ["title", "genres"]]
    assert blocks[0].splitlines()[1].split()[:2] == ["1.", first.item_ids[0, 0]]
    assert title in blocks[0].splitlines()[1] and genres in blocks[0].splitlines()[1]
