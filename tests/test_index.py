"""Index building against brute force: inner-product metric, chunked exact search, tuning, recall with ties."""
import faiss
import numpy as np
import pytest

from twotower.index import IndexSpec, build_and_measure, build_index, default_nlist, exact_search, recall_at, search


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng, n, d, centres=32):
    """Unit vectors around a few centres: the structure real embeddings have and IVF exploits."""
    c = unit(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + 0.15 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_default_nlist_is_power_of_two_near_four_sqrt_n():
    assert default_nlist(1_000_000) == 4096  # 4 * 1000 = 4000 -> 2**12
    assert default_nlist(10_000) == 512  # 400 -> log2 = 8.6 -> 2**9
    assert default_nlist(0) == 1


def test_auto_is_exact_for_small_catalogues_and_fills_the_large_key():
    auto = IndexSpec(key="auto", large={"key": "IVF{nlist},PQ{pq_m}x4fs,RFlat", "tune": {"name": "nprobe", "values": [1, 2]}})
    assert auto.resolve(99_999, 64).key == "Flat"
    large = auto.resolve(1_000_000, 64)
    assert (large.key, large.nlist, large.tune["name"]) == ("IVF4096,PQ32x4fs,RFlat", 4096, "nprobe")


def test_bad_specs_are_refused_with_the_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nprobes'\]"):
        IndexSpec.from_config({"key": "Flat", "nprobes": 4})
    with pytest.raises(ValueError, match="needs at least nlist=64 vectors to train, the catalogue has 10"):
        IndexSpec(key="IVF{nlist},Flat", nlist=64).resolve(10, 8)


def test_flat_index_ranks_by_inner_product_not_l2():
    # q . a = 2.0 > q . b = 0.9, but b is nearer in L2 (|q - a| = 1.41 > |q - b| = 0.14): IP must pick a.
    vectors = np.array([[2.0, 0.0], [0.9, 0.1]], dtype=np.float32)
    index, _ = build_index(vectors, IndexSpec(key="Flat"))
    scores, rows = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 2)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert rows.tolist() == [[0, 1]]
    np.testing.assert_allclose(scores, [[2.0, 0.9]], rtol=1e-6)


def test_chunked_exact_search_matches_numpy():
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng, 1000, 16), unit(rng, 7, 16)
    scores, rows = exact_search(vectors, queries, k=5, chunk=64)
    full = queries @ vectors.T
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :5], rtol=1e-5)


def test_recall_tolerates_ties_at_the_kth_score():
    exact_rows, exact_scores = np.array([[0, 1]]), np.array([[0.9, 0.5]])
    # Row 2 also scores 0.5: swapping it for row 1 is not a miss; row 3 (0.4) is.
    assert recall_at(np.array([[0, 2]]), exact_rows, exact_scores, np.array([[0.9, 0.5]])) == 1.0
    assert recall_at(np.array([[0, 3]]), exact_rows, exact_scores, np.array([[0.9, 0.4]])) == 0.5


def test_ivf_is_tuned_to_the_target_recall_on_the_queries_and_measured():
    rng = np.random.default_rng(1)
    vectors, queries = clustered(rng, 4000, 16), clustered(rng, 100, 16)
    spec = IndexSpec(key="IVF{nlist},Flat", tune={"name": "nprobe", "values": [1, 2, 4, 8, 16, 32, 64, 128, 256]}, target_recall=0.95)
    index, infos = build_and_measure(vectors, queries, spec)
    assert infos["key"] == "IVF256,Flat" and infos["nlist"] == 256 and infos["trained_on"] == 4000
    assert infos["ntotal"] == 4000 and infos["metric"] == "inner_product" and infos["dim"] == 16
    assert infos["recall@10"] >= 0.95
    assert faiss.extract_index_ivf(index).nprobe == infos["search_params"]["nprobe"]
    # Tuned on the even queries: the smallest value reaching the target there; one step lower misses it.
    tuned_on = queries[0::2]
    smaller = [v for v in spec.tune["values"] if v < infos["search_params"]["nprobe"]]
    assert smaller, "the data should need more than one probe"
    faiss.extract_index_ivf(index).nprobe = smaller[-1]
    _, rows = index.search(tuned_on, 10)
    exact_scores, exact_rows = exact_search(vectors, tuned_on, 10)
    assert recall_at(rows, exact_rows, exact_scores, np.take_along_axis(tuned_on @ vectors.T, rows, 1)) < 0.95
    assert set(infos["latency_ms"]) >= {"p50", "p99"} and infos["size_bytes"] > 4000 * 16 * 4


def test_the_sweep_measures_every_tried_setting_at_10_and_100_beside_exact_search():
    rng = np.random.default_rng(1)
    vectors, queries = clustered(rng, 4000, 16), clustered(rng, 100, 16)
    spec = IndexSpec(key="IVF{nlist},Flat", tune={"name": "nprobe", "values": [1, 4, 16, 64, 256]}, target_recall=0.95)
    index, infos = build_and_measure(vectors, queries, spec)
    settings = infos["sweep"]["settings"]
    assert [point["search_params"] for point in settings] == [{"nprobe": v} for v in (1.0, 4.0, 16.0, 64.0, 256.0)]
    (chosen,) = [point for point in settings if point["chosen"]]
    assert chosen["search_params"] == infos["search_params"]
    # The same queries at the same setting as the top-level figures (the other half of the sample, not the tuned one).
    assert chosen["recall@10"] == infos["recall@10"] and chosen["recall@100"] == infos["recall@100"]
    # Every list probed is exact search; recall only grows with nprobe.
    assert settings[-1]["recall@10"] == settings[-1]["recall@100"] == 1.0
    for k in (10, 100):
        recalls = [point[f"recall@{k}"] for point in settings]
        assert recalls == sorted(recalls) and recalls[0] < 1.0
    exact = infos["sweep"]["exact"]
    assert exact["recall@10"] == exact["recall@100"] == 1.0 and exact["latency_ms"]["p50"] > 0
    assert faiss.extract_index_ivf(index).nprobe == infos["search_params"]["nprobe"]  # set back after the sweep


def test_an_untuned_index_is_one_point_of_the_sweep():
    rng = np.random.default_rng(3)
    vectors, queries = clustered(rng, 500, 8), clustered(rng, 20, 8)
    _, infos = build_and_measure(vectors, queries, IndexSpec(key="Flat"))
    (point,) = infos["sweep"]["settings"]
    assert point["search_params"] == {} and point["chosen"] and point["recall@10"] == point["recall@100"] == 1.0


def test_every_configured_index_type_finds_the_exact_top10(tmp_path):
    rng = np.random.default_rng(2)
    vectors, queries = clustered(rng, 3000, 16), clustered(rng, 50, 16)
    for key, options in [
        ("Flat", {}),
        ("IVF{nlist},PQ{pq_m}x4fs,RFlat", {"search": {"k_factor_rf": 4}, "tune": {"name": "nprobe", "values": [4, 16, 64, 256]}}),
        ("HNSW32,Flat", {"ef_construction": 40, "tune": {"name": "efSearch", "values": [16, 64, 256]}}),
    ]:
        index, infos = build_and_measure(vectors, queries, IndexSpec(key=key, **options))
        assert infos["recall@10"] >= 0.95, (key, infos)
        faiss.write_index(index, str(tmp_path / "i.faiss"))
        # Search parameters travel inside the file: a plain faiss reader gets the same results.
        again = faiss.read_index(str(tmp_path / "i.faiss"))
        np.testing.assert_array_equal(again.search(queries, 10)[1], index.search(queries, 10)[1])


def test_the_index_is_tuned_to_the_recall_at_the_k_serving_asks_for():
    rng = np.random.default_rng(4)
    vectors, queries = clustered(rng, 4000, 16), clustered(rng, 100, 16)
    tune = {"name": "nprobe", "values": [1, 2, 4, 8, 16, 32, 64, 128, 256]}
    at_10 = build_and_measure(vectors, queries, IndexSpec(key="IVF{nlist},Flat", tune=tune, target_recall=0.95))[1]
    at_100 = build_and_measure(vectors, queries, IndexSpec(key="IVF{nlist},Flat", tune=tune, target_recall=0.95, target_k=100))[1]
    assert at_100["target_recall@100"] == 0.95 and "target_recall@10" not in at_100
    assert at_100["search_params"]["nprobe"] > at_10["search_params"]["nprobe"]
    # The chosen setting is the smallest reaching the target at 100 on the tuning half.
    points = {p["search_params"]["nprobe"]: p for p in at_100["sweep"]["settings"]}
    assert at_100["recall@100"] >= 0.9 and points[at_100["search_params"]["nprobe"]]["chosen"]


@pytest.mark.parametrize("key", ["Flat", "HNSW32,Flat"])
def test_nlist_for_a_key_without_lists_is_refused(key):
    """index=flat / hnsw with +index.nlist=64 built the same index as without it, silently."""
    with pytest.raises(ValueError, match=rf"index.nlist=64 is not read by index key '{key}': only an IVF key with \{{nlist\}} has lists"):
        IndexSpec.from_config({"key": key, "nlist": 64})
    assert IndexSpec.from_config({"key": "IVF{nlist},Flat", "nlist": 64}).resolve(1000, 8).key == "IVF64,Flat"


def test_auto_passes_add_chunk_to_the_large_index():
    spec = IndexSpec(key="auto", add_chunk=1000, large={"key": "IVF{nlist},Flat"})
    assert spec.resolve(1_000_000, 8).add_chunk == 1000 and spec.resolve(10, 8).add_chunk == 1000


def test_auto_passes_target_k_to_the_large_index():
    spec = IndexSpec(key="auto", target_k=100, large={"key": "IVF{nlist},Flat", "tune": {"name": "nprobe", "values": [1, 4]}})
    assert spec.resolve(200_000, 16).target_k == 100


def test_a_compressed_index_with_an_exact_re_rank_of_more_candidates_ranks_exactly():
    rng = np.random.default_rng(5)
    vectors, queries = clustered(rng, 4000, 16), clustered(rng, 100, 16)
    tune = {"name": "nprobe", "values": [1, 4, 16, 64]}
    alone = build_and_measure(vectors, queries, IndexSpec(key="IVF{nlist},SQ4", tune=tune, target_recall=0.99))[1]
    reranked = build_and_measure(vectors, queries, IndexSpec(key="IVF{nlist},SQ4", tune=tune, target_recall=0.99, fetch_factor=10))[1]
    assert alone["fetch_factor"] == 1 and reranked["fetch_factor"] == 10
    # 4-bit codes alone misorder close items; their best 10 x k re-scored exactly do not.
    best_alone = max(p["recall@10"] for p in alone["sweep"]["settings"])
    best_reranked = max(p["recall@10"] for p in reranked["sweep"]["settings"])
    assert best_alone < 0.95 <= best_reranked, (best_alone, best_reranked)
    assert reranked["recall@10"] >= 0.95


def test_search_with_a_fetch_factor_re_ranks_the_index_candidates_by_exact_score():
    rng = np.random.default_rng(6)
    vectors, queries = clustered(rng, 2000, 8), clustered(rng, 5, 8)
    index, _ = build_index(vectors, IndexSpec(key="IVF{nlist},SQ4").resolve(2000, 8))
    _, candidates = index.search(queries, 30)
    rows = search(index, vectors, queries, 10, fetch_factor=3)
    for q in range(len(queries)):
        exact = queries[q] @ vectors[candidates[q]].T
        assert rows[q].tolist() == candidates[q][np.argsort(-exact, kind="stable")[:10]].tolist()
