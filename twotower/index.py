"""FAISS inner-product indexes: build from a factory key, tune the search knob, measure against exact search.

The towers output unit vectors trained with dot-product logits, so every index here uses
``METRIC_INNER_PRODUCT`` (an L2 index ranks the same only when every vector has the same norm,
and stops doing so as soon as a non-normalised tower or an added item breaks that).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import faiss
import numpy as np

log = logging.getLogger(__name__)

#: Catalogues up to this size get exact search from ``auto`` (a flat scan is fast enough and exact).
EXACT_BELOW = 100_000


@dataclass
class IndexSpec:
    """How to build one index.

    Args:
        key: a ``faiss.index_factory`` string; ``{nlist}`` is filled from the catalogue size and
            ``{pq_m}`` with half the vector dim. ``auto`` picks by catalogue size (see ``resolve``).
        nlist: IVF lists; ``None``: a power of two near ``4 * sqrt(n)``.
        train_size: items sampled (uniformly, seeded) to train IVF / PQ; all of them when fewer.
        add_chunk: vectors added per ``index.add`` call, so adding never copies the whole catalogue.
        search: fixed search-time parameters by their ``faiss.ParameterSpace`` names (``k_factor_rf``...).
        tune: a search parameter and the values to try, smallest first; the smallest value whose
            recall@10 against exact search reaches ``target_recall`` on the query sample is kept.
        target_recall: recall@10 the tuned parameter must reach.
        ef_construction: HNSW graph build effort (HNSW keys only).
        large: the spec ``auto`` uses above ``EXACT_BELOW`` items.
        seed: sampling seed.
    """

    key: str = "Flat"
    nlist: int | None = None
    train_size: int = 262_144
    add_chunk: int = 65_536
    search: dict[str, float] = field(default_factory=dict)
    tune: dict[str, Any] | None = None
    target_recall: float = 0.95
    ef_construction: int | None = None
    large: dict[str, Any] | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "IndexSpec":
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"index config has unknown key(s) {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.items()})

    def resolve(self, n: int, dim: int) -> "IndexSpec":
        """The concrete spec for ``n`` vectors of ``dim``: ``auto`` chosen, ``{nlist}``/``{pq_m}`` filled in."""
        if self.key == "auto":
            if n < EXACT_BELOW or not self.large:
                return IndexSpec(key="Flat", seed=self.seed, add_chunk=self.add_chunk)
            return IndexSpec.from_config({"seed": self.seed, **self.large}).resolve(n, dim)
        nlist = self.nlist or default_nlist(n)
        if "{nlist}" in self.key and n < nlist:
            raise ValueError(f"index '{self.key}' needs at least nlist={nlist} vectors to train, the catalogue has {n}")
        key = self.key.format(nlist=nlist, pq_m=max(1, dim // 2))
        return IndexSpec(**{**asdict(self), "key": key, "nlist": nlist if "{nlist}" in self.key else None, "large": None})


def default_nlist(n: int) -> int:
    """A power of two near 4 * sqrt(n), at least 1 (faiss' guideline for IVF list counts)."""
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))


def build_index(vectors: np.ndarray, spec: IndexSpec) -> tuple[faiss.Index, int]:
    """An inner-product index over ``vectors`` (n, d) float32, trained on a sample and filled in chunks.

    ``vectors`` may be a memory-mapped array: only the training sample and one chunk are in memory at once.

    Returns:
        the index and the number of vectors it was trained on (0 for indexes that need no training).
    """
    n, dim = vectors.shape
    index = faiss.index_factory(dim, spec.key, faiss.METRIC_INNER_PRODUCT)
    if spec.ef_construction is not None:
        hnsw = _hnsw_of(index)
        hnsw.efConstruction = spec.ef_construction
    trained_on = 0
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(spec.seed).choice(n, size=min(n, spec.train_size), replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        trained_on = len(rows)
    for chunk in _chunks(vectors, spec.add_chunk):
        index.add(chunk)
    apply_search_params(index, spec.search)
    return index, trained_on


def _hnsw_of(index: faiss.Index) -> Any:
    inner = faiss.downcast_index(index)
    while not hasattr(inner, "hnsw"):
        if not hasattr(inner, "base_index"):
            raise ValueError(f"ef_construction is set but index {type(inner).__name__} has no HNSW graph")
        inner = faiss.downcast_index(inner.base_index)
    return inner.hnsw


def _chunks(vectors: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, vectors.shape[0], size):
        yield np.ascontiguousarray(vectors[start : start + size], dtype=np.float32)


def apply_search_params(index: faiss.Index, params: Mapping[str, float]) -> None:
    """Set search-time parameters (``nprobe``, ``efSearch``, ``k_factor_rf``...) through faiss' ParameterSpace."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product (scores, rows), merging per-chunk results so memory stays bounded."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, vectors.shape[0], chunk):
        block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        scores = queries @ block.T  # (Q, chunk)
        heap.add_result(scores, np.broadcast_to(np.arange(start, start + len(block), dtype=np.int64), scores.shape).copy())
    heap.finalize()
    return heap.D, heap.I


def recall_at(found: np.ndarray, exact_rows: np.ndarray, exact_scores: np.ndarray, found_scores: np.ndarray | None = None) -> float:
    """Share of the exact top-k the index found, ties tolerated (as faiss.contrib does).

    A returned item whose exact score equals the k-th exact score counts as a hit even if exact
    search broke the tie differently. ``found_scores`` are the exact scores of the found rows.
    """
    k = exact_rows.shape[1]
    hits = 0
    for q in range(len(found)):
        truth = set(exact_rows[q].tolist())
        got = found[q][:k]
        in_truth = np.fromiter((r in truth for r in got), dtype=bool, count=len(got))
        if found_scores is not None:
            in_truth |= (got >= 0) & (found_scores[q][:k] >= exact_scores[q, -1] - 1e-6)
        hits += min(k, int(in_truth.sum()))
    return hits / (len(found) * k)


def exact_scores_of(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(Q, k) exact inner products of each query with its returned rows; -inf where the index returned -1."""
    safe = np.where(rows >= 0, rows, 0)
    scores = np.einsum("qd,qkd->qk", queries, np.asarray(vectors[safe.ravel()], dtype=np.float32).reshape(*rows.shape, -1))
    return np.where(rows >= 0, scores, -np.inf)


def measure(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, ks: Iterable[int] = (10, 100), latency_queries: int = 200) -> dict[str, Any]:
    """Recall@k of ``index`` against exact search over ``vectors`` on ``queries``, and single-query latency."""
    ks = sorted(set(k for k in ks if k <= vectors.shape[0])) or [vectors.shape[0]]
    kmax = max(ks)
    exact_scores, exact_rows = exact_search(vectors, queries, kmax)
    _, rows = index.search(queries, kmax)
    found_scores = exact_scores_of(vectors, queries, rows)
    out: dict[str, Any] = {f"recall@{k}": recall_at(rows[:, :k], exact_rows[:, :k], exact_scores[:, :k], found_scores[:, :k]) for k in ks}
    times = []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one request, one thread: how a serving worker answers single queries
    try:
        for q in queries[:latency_queries]:
            start = time.perf_counter()
            index.search(q[None], 10)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    out["latency_ms"] = {
        "p50": float(np.percentile(times, 50) * 1e3),
        "p99": float(np.percentile(times, 99) * 1e3),
        "queries": len(times),
        "omp_threads": 1,
    }
    out["queries"] = len(queries)
    return out


def tune(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, spec: IndexSpec) -> dict[str, float]:
    """Smallest value of ``spec.tune['name']`` with recall@10 >= target on ``queries``; sets it on ``index``.

    Falls back to the largest value tried (with a warning) when none reaches the target.
    """
    if not spec.tune:
        return {}
    name, values = spec.tune["name"], sorted(spec.tune["values"])
    k = min(10, vectors.shape[0])
    exact_scores, exact_rows = exact_search(vectors, queries, k)
    chosen, recall = values[-1], 0.0
    for value in values:
        apply_search_params(index, {name: value})
        _, rows = index.search(queries, k)
        recall = recall_at(rows, exact_rows, exact_scores, exact_scores_of(vectors, queries, rows))
        if recall >= spec.target_recall:
            chosen = value
            break
    else:
        log.warning("no %s in %s reaches recall@10 %.3f (best %.3f); using %s", name, values, spec.target_recall, recall, chosen)
    apply_search_params(index, {name: chosen})
    return {name: float(chosen)}


def index_size_bytes(index: faiss.Index) -> int:
    """Bytes the index takes once written (what ships and what a serving process maps in)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def build_and_measure(vectors: np.ndarray, queries: np.ndarray, spec: IndexSpec) -> tuple[faiss.Index, dict[str, Any]]:
    """Resolve ``spec`` for the catalogue, build, tune on half the ``queries``, measure on the other half.

    Returns:
        the index, with its search parameters set, and its description for ``index_infos.json``.
    """
    n, dim = vectors.shape
    concrete = spec.resolve(n, dim)
    start = time.perf_counter()
    index, trained_on = build_index(vectors, concrete)
    build_s = time.perf_counter() - start
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    # Tune on one half of the queries and measure on the other, so the reported recall is not fitted.
    tune_queries, eval_queries = (queries[0::2], queries[1::2]) if concrete.tune and len(queries) > 1 else (queries, queries)
    search = {**{k: float(v) for k, v in concrete.search.items()}, **tune(index, vectors, tune_queries, concrete)}
    infos = {
        "key": concrete.key,
        "requested": spec.key,
        "metric": "inner_product",
        "dim": dim,
        "ntotal": int(index.ntotal),
        "nlist": concrete.nlist,
        "trained_on": trained_on,
        "search_params": search,
        "target_recall@10": concrete.target_recall if concrete.tune else None,
        "build_seconds": build_s,
        "size_bytes": index_size_bytes(index),
        **measure(index, vectors, eval_queries),
    }
    return index, infos
