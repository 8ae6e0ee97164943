"""FAISS inner-product indexes: build from a factory key, tune the search knob, measure against exact search,
and read one back from a file that may be corrupt or crafted (``read_index_file``).

The towers output unit vectors trained with dot-product logits, so every index here uses
``METRIC_INNER_PRODUCT`` (an L2 index ranks the same only when every vector has the same norm,
and stops doing so as soon as a non-normalised tower or an added item breaks that).
"""
from __future__ import annotations

import logging
import math
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import faiss
import numpy as np

from twotower.constraints import AT_LEAST_1, SHARE, ArgumentsOf
from twotower.progress import progress

log = logging.getLogger(__name__)

#: Catalogues up to this size get exact search from ``auto`` (a flat scan is fast enough and exact).
EXACT_BELOW = 100_000


#: What ``key: auto`` reads at the top level (the rest of the large index's spec is in ``large``).
AUTO_READS = {"key", "large", "target_k", "add_chunk", "seed"}


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
            recall@``target_k`` against exact search reaches ``target_recall`` on the query sample is kept.
        target_recall: recall@``target_k`` the tuned parameter must reach.
        target_k: the K of that recall: the number of items serving asks the index for (10, 100, ...).
        fetch_factor: serving asks the index for ``fetch_factor`` x K candidates and re-ranks them by
            their exact scores with the artifact's item vectors (which it holds anyway), so a compressed
            index (scalar-quantised codes) needs no second copy of the vectors to rank exactly; tuning,
            recall and latency are measured with that re-rank.
        ef_construction: HNSW graph build effort (HNSW keys only).
        large: the spec ``auto`` uses above ``EXACT_BELOW`` items.
        seed: sampling seed.
    """

    key: str = "Flat"
    nlist: Annotated[int, AT_LEAST_1] | None = None
    train_size: Annotated[int, AT_LEAST_1] = 262_144
    add_chunk: Annotated[int, AT_LEAST_1] = 65_536
    search: dict[str, float] = field(default_factory=dict)
    tune: dict[str, Any] | None = None
    target_recall: Annotated[float, SHARE] = 0.95
    target_k: Annotated[int, AT_LEAST_1] = 10
    fetch_factor: Annotated[int, AT_LEAST_1] = 1
    ef_construction: Annotated[int, AT_LEAST_1] | None = None
    # Checked as an IndexSpec's arguments (twotower.config_check), though only catalogues above EXACT_BELOW build it.
    large: Annotated[dict[str, Any] | None, ArgumentsOf("twotower.index.IndexSpec", ("large",))] = None
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IndexSpec:
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"index config has unknown key(s) {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        if config.get("key") == "auto":
            # auto builds Flat, or the index of `large`: a setting of neither kind would silently not apply.
            unread = sorted(set(config) - AUTO_READS)
            if unread:
                raise ValueError("; ".join(f"index.{name} is not read by index=auto: set index.large.{name}" for name in unread)
                                 + f" (the index built above {EXACT_BELOW} items)")
        key = config.get("key", cls.key)
        if config.get("nlist") is not None and key != "auto" and "{nlist}" not in key:
            raise ValueError(f"index.nlist={config['nlist']} is not read by index key '{key}': only an IVF key with {{nlist}} has lists "
                             "(index=ivf_flat, ivf_sq, ivf_pq)")
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.items()})

    def resolve(self, n: int, dim: int) -> IndexSpec:
        """The concrete spec for ``n`` vectors of ``dim``: ``auto`` chosen, ``{nlist}``/``{pq_m}`` filled in."""
        if self.key == "auto":
            if n < EXACT_BELOW or not self.large:
                return IndexSpec(key="Flat", seed=self.seed, add_chunk=self.add_chunk)
            return IndexSpec.from_config({"seed": self.seed, "target_k": self.target_k, "add_chunk": self.add_chunk, **self.large}).resolve(n, dim)
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
    for chunk in progress(_chunks(vectors, spec.add_chunk), desc="building the index", total=-(-vectors.shape[0] // spec.add_chunk), unit="chunk"):
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


def search(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int, fetch_factor: int = 1) -> np.ndarray:
    """(Q, k) rows of the top ``k``: the index's own when ``fetch_factor`` is 1, else its best ``fetch_factor`` x k
    re-ranked by exact inner product with ``vectors`` (as ``Retriever`` serves them)."""
    if fetch_factor <= 1:
        return index.search(queries, k)[1]
    _, rows = index.search(queries, min(index.ntotal, k * fetch_factor))
    order = np.argsort(-exact_scores_of(vectors, queries, rows), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(rows, order, axis=1)


def measure(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, ks: Iterable[int] = (10, 100), latency_queries: int = 200,
            exact: tuple[np.ndarray, np.ndarray] | None = None, fetch_factor: int = 1) -> dict[str, Any]:
    """Recall@k of ``index`` against exact search over ``vectors`` on ``queries``, and single-query latency.

    ``exact``: ``exact_search(vectors, queries, max(ks))`` when the caller already has it (a sweep measures many settings).
    """
    ks = _measured_ks(vectors.shape[0], ks)
    kmax = max(ks)
    exact_scores, exact_rows = exact if exact is not None else exact_search(vectors, queries, kmax)
    rows = search(index, vectors, queries, kmax, fetch_factor)
    found_scores = exact_scores_of(vectors, queries, rows)
    out: dict[str, Any] = {f"recall@{k}": recall_at(rows[:, :k], exact_rows[:, :k], exact_scores[:, :k], found_scores[:, :k]) for k in ks}
    out["latency_ms"] = single_query_latency(lambda query: search(index, vectors, query, 10, fetch_factor), queries[:latency_queries])
    out["queries"] = len(queries)
    return out


def _measured_ks(n: int, ks: Iterable[int]) -> list[int]:
    """The cut-offs a catalogue of ``n`` items can be measured at (all of it when every k is larger)."""
    return sorted(set(k for k in ks if k <= n)) or [n]


def single_query_latency(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, Any]:
    """p50 / p99 milliseconds of ``search`` on one (1, D) query at a time, with one faiss thread (how a serving worker answers)."""
    times = []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for q in queries:
            start = time.perf_counter()
            search(q[None])
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return {"p50": float(np.percentile(times, 50) * 1e3), "p99": float(np.percentile(times, 99) * 1e3), "queries": len(times), "omp_threads": 1}


def sweep(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, spec: IndexSpec, chosen: Mapping[str, float],
          latency_queries: int = 100, exact: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Recall@10 / @100 and latency of ``index`` at every value of its tuned parameter, and of exact search.

    Returns ``{"settings": [{"search_params", "recall@10", "recall@100", "latency_ms", "chosen"}, ...],
    "exact": {"recall@10": 1.0, ..., "latency_ms"}}``, the curve of ``index_infos.json`` that
    ``twotower.plots.plot_recall_vs_latency`` draws. Exact search is a brute-force scan
    (``faiss.knn``, no index). ``chosen`` (the tuned parameters) is set on the index again afterwards.
    ``exact``: ``exact_search(vectors, queries, 100)`` when the caller already has it.
    """
    ks = _measured_ks(vectors.shape[0], (10, 100))
    exact = exact if exact is not None else exact_search(vectors, queries, max(ks))
    values = sorted(spec.tune["values"]) if spec.tune else [None]
    settings = []
    for value in values:
        params = {spec.tune["name"]: float(value)} if value is not None else {}
        apply_search_params(index, {**spec.search, **params})
        point = measure(index, vectors, queries, ks, latency_queries, exact, spec.fetch_factor)
        settings.append({"search_params": {**{k: float(v) for k, v in spec.search.items()}, **params}, **point,
                         "chosen": all(chosen.get(k) == v for k, v in params.items())})
    apply_search_params(index, chosen)
    flat = np.ascontiguousarray(vectors, dtype=np.float32)
    scan = single_query_latency(lambda query: faiss.knn(query, flat, 10, faiss.METRIC_INNER_PRODUCT), queries[:latency_queries])
    return {"settings": settings, "exact": {**{f"recall@{k}": 1.0 for k in ks}, "latency_ms": scan, "method": "brute-force scan (faiss.knn)"}}


def tune(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, spec: IndexSpec) -> dict[str, float]:
    """Smallest value of ``spec.tune['name']`` with recall@``spec.target_k`` >= target on ``queries``; sets it on ``index``.

    Falls back to the largest value tried (with a warning) when none reaches the target.
    """
    if not spec.tune:
        return {}
    name, values = spec.tune["name"], sorted(spec.tune["values"])
    k = min(spec.target_k, vectors.shape[0])
    exact_scores, exact_rows = exact_search(vectors, queries, k)
    chosen, recall = values[-1], 0.0
    for value in values:
        apply_search_params(index, {name: value})
        rows = search(index, vectors, queries, k, spec.fetch_factor)
        recall = recall_at(rows, exact_rows, exact_scores, exact_scores_of(vectors, queries, rows))
        if recall >= spec.target_recall:
            chosen = value
            break
    else:
        log.warning("no %s in %s reaches recall@%d %.3f (best %.3f); using %s", name, values, k, spec.target_recall, recall, chosen)
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
    search_params = {**{k: float(v) for k, v in concrete.search.items()}, **tune(index, vectors, tune_queries, concrete)}
    exact = exact_search(vectors, eval_queries, max(_measured_ks(n, (10, 100))))  # once, for the figures and the sweep
    infos = {
        "key": concrete.key,
        "requested": spec.key,
        "metric": "inner_product",
        "dim": dim,
        "ntotal": int(index.ntotal),
        "nlist": concrete.nlist,
        "trained_on": trained_on,
        "search_params": search_params,
        f"target_recall@{concrete.target_k}": concrete.target_recall if concrete.tune else None,
        "build_seconds": build_s,
        "size_bytes": index_size_bytes(index),
        "fetch_factor": concrete.fetch_factor,
        **measure(index, vectors, eval_queries, exact=exact, fetch_factor=concrete.fetch_factor),
        "sweep": sweep(index, vectors, eval_queries, concrete, search_params, exact=exact),
    }
    return index, infos


# ---------------------------------------------------------------------- reading an index from an untrusted file
#: A child process reading an index that is not flat may use twice the file's size plus this much memory.
READ_SLACK_BYTES = 1 << 30
FLAT_FOURCCS = (b"IxFI", b"IxF2", b"IxFl")  # IndexFlatIP, IndexFlatL2, IndexFlat
# What faiss' read_index_header reads after the fourcc: d, ntotal, two unused int64, is_trained, metric_type.
_FLAT_HEADER = struct.Struct("<4siqqq?i")

# The child: limits its own address space, then lets faiss read the file (a crafted length fails in
# faiss' allocation, a crafted structure crashes the child, and neither reaches the caller).
_READ_IN_CHILD = """
import resource, sys
import faiss
path, budget = sys.argv[1], int(sys.argv[2])
with open("/proc/self/statm") as statm:
    in_use = int(statm.read().split()[0]) * resource.getpagesize()
_, hard = resource.getrlimit(resource.RLIMIT_AS)
limit = in_use + budget if hard == resource.RLIM_INFINITY else min(in_use + budget, hard)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
faiss.read_index(path)
"""


def read_index_file(path: Path) -> faiss.Index:
    """``faiss.read_index`` for a file that may be corrupt or crafted: no allocation beyond what the file can hold.

    faiss allocates each array its file declares before reading it, so a crafted length makes it
    try a 64 GB allocation (or crash). A flat index has a fixed layout, checked here byte for byte
    first (the common case, and free); any other kind is first read by a child process
    (``sys.executable``, about 0.3 s) limited to twice the file's size plus ``READ_SLACK_BYTES`` of
    memory (Linux), where a bad file fails or crashes without harming this process. Then
    ``check_structure`` checks what faiss does not.

    Raises:
        ValueError: naming ``path`` and what is wrong with it.
    """
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(_FLAT_HEADER.size + 4 + 8)
    if head[:4] in FLAT_FOURCCS:
        _check_flat_layout(path, head, size)
    else:
        _read_in_child(path, size)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: faiss cannot read it: {str(err).strip().splitlines()[-1]}") from None
    check_structure(index, path)
    return index


def _check_flat_layout(path: Path, head: bytes, size: int) -> None:
    """A flat index file is its header, the count of floats, and exactly ntotal x d floats."""
    if len(head) < _FLAT_HEADER.size:
        raise ValueError(f"{path} has {size} bytes, fewer than a flat index header ({_FLAT_HEADER.size})")
    _, d, ntotal, _, _, _, metric = _FLAT_HEADER.unpack_from(head)
    at = _FLAT_HEADER.size + (4 if metric > 1 else 0)  # faiss writes a metric argument after the types that take one
    if len(head) < at + 8:
        raise ValueError(f"{path} has {size} bytes, fewer than a flat index header and its vector count ({at + 8})")
    (floats,) = struct.unpack_from("<Q", head, at)
    if d <= 0 or ntotal < 0:
        raise ValueError(f"{path}: flat index header declares dim {d} and {ntotal} vectors")
    expected = at + 8 + 4 * d * ntotal
    if floats != d * ntotal or size != expected:
        raise ValueError(f"{path}: flat index header declares {ntotal} vectors of dim {d} and {floats} floats "
                         f"({expected} bytes in all), but the file has {size} bytes")


def _read_in_child(path: Path, size: int) -> None:
    budget = 2 * size + READ_SLACK_BYTES
    done = subprocess.run([sys.executable, "-c", _READ_IN_CHILD, str(path), str(budget)], capture_output=True)
    if done.returncode < 0:
        raise ValueError(f"{path}: faiss crashed reading it (signal {-done.returncode}) in a child process")
    if done.returncode:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"{path}: faiss cannot read it within {budget} bytes of memory ({size} in the file): {last}")


def check_structure(index: faiss.Index, where: Path | str) -> None:
    """Raises ValueError naming ``where`` where an index is inconsistent in ways faiss does not check on reading
    but trusts on search: graph links or list ids outside the index, parts of another size or dim, a codebook of the wrong size.

    Covers the parts twotower's index configs build (flat, HNSW, IVF, PQ, refine); other kinds pass unchecked.
    """
    index = faiss.downcast_index(index)
    n, d = index.ntotal, index.d
    kind = type(index).__name__

    def part(name: str, sub: faiss.Index, rows: int) -> None:
        sub = faiss.downcast_index(sub)
        if sub.d != d or sub.ntotal != rows:
            raise ValueError(f"{where}: {kind}'s {name} has {sub.ntotal} vectors of dim {sub.d}, expected {rows} of dim {d}")
        check_structure(sub, where)

    if isinstance(index, faiss.IndexHNSW):
        _check_hnsw(index.hnsw, n, where)
        part("storage", index.storage, n)
    if isinstance(index, faiss.IndexIVF):
        part("coarse quantizer", index.quantizer, index.nlist)
        _check_lists(index, where)
    if isinstance(index, faiss.IndexRefine):
        part("base index", index.base_index, n)
        part("refine index", index.refine_index, n)
    pq = getattr(index, "pq", None)
    if isinstance(pq, faiss.ProductQuantizer):
        centroids = pq.centroids.size()
        if pq.d != d or centroids != pq.M * pq.ksub * pq.dsub:
            raise ValueError(f"{where}: {kind}'s product quantizer has dim {pq.d} and {centroids} centroid floats, "
                             f"expected dim {d} and M x ksub x dsub = {pq.M * pq.ksub * pq.dsub}")


def _check_hnsw(hnsw: Any, n: int, where: Path | str) -> None:
    levels, offsets = faiss.vector_to_array(hnsw.levels), faiss.vector_to_array(hnsw.offsets)
    neighbors, per_level = faiss.vector_to_array(hnsw.neighbors), faiss.vector_to_array(hnsw.cum_nneighbor_per_level)
    if len(levels) != n or len(offsets) != n + 1 or len(per_level) < 2:
        raise ValueError(f"{where}: HNSW graph has {len(levels)} levels and {len(offsets)} offsets for {n} vectors "
                         f"({len(per_level)} link counts per level)")
    if n and (levels.min() < 1 or levels.max() >= len(per_level)):
        raise ValueError(f"{where}: HNSW graph has node levels from {levels.min()} to {levels.max()}, expected 1 to {len(per_level) - 1}")
    if offsets[0] != 0 or (n and (np.diff(offsets) != per_level[levels]).any()) or offsets[-1] != len(neighbors):
        raise ValueError(f"{where}: HNSW graph offsets do not match its levels and its {len(neighbors)} links")
    if len(neighbors) and (neighbors.min() < -1 or neighbors.max() >= n):
        raise ValueError(f"{where}: HNSW graph links to nodes {neighbors.min()} to {neighbors.max()}, outside 0..{n - 1}")
    if n and not (0 <= hnsw.entry_point < n and hnsw.max_level == levels.max() - 1):
        raise ValueError(f"{where}: HNSW graph enters at node {hnsw.entry_point} on level {hnsw.max_level}, "
                         f"expected a node in 0..{n - 1} on level {levels.max() - 1}")


def _check_lists(index: Any, where: Path | str) -> None:
    """Every row of the index in exactly one inverted list, and the lists' code size the index's."""
    lists = index.invlists
    # Fast-scan lists store codes in blocks and record no per-vector code size (faiss' own check on reading allows that too).
    if lists is None or lists.nlist != index.nlist or lists.code_size not in (index.code_size, faiss.InvertedLists.INVALID_CODE_SIZE):
        raise ValueError(f"{where}: {type(index).__name__} has no inverted lists of {index.nlist} lists and code size {index.code_size}")
    seen = np.zeros(index.ntotal, dtype=np.int64)
    for list_no in range(index.nlist):
        size = lists.list_size(list_no)
        if not size:
            continue
        pointer = lists.get_ids(list_no)
        try:
            ids = faiss.rev_swig_ptr(pointer, size)
            if ids.min() < 0 or ids.max() >= index.ntotal:
                raise ValueError(f"{where}: inverted list {list_no} holds ids {ids.min()} to {ids.max()}, outside 0..{index.ntotal - 1}")
            np.add.at(seen, ids, 1)
        finally:
            lists.release_ids(list_no, pointer)
    if (seen != 1).any():
        row = int(np.flatnonzero(seen != 1)[0])
        raise ValueError(f"{where}: the inverted lists hold row {row} {seen[row]} times (every row belongs in exactly one list)")


# Scalar-quantiser codes by faiss' qtype, as index_factory names them.
SQ_TYPES = {faiss.ScalarQuantizer.QT_4bit: "SQ4", faiss.ScalarQuantizer.QT_6bit: "SQ6", faiss.ScalarQuantizer.QT_8bit: "SQ8"}


def factory_key(index: faiss.Index) -> str | None:
    """The ``faiss.index_factory`` key of an index's structure, for the kinds twotower's index configs build; None for other kinds."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefineFlat):
        base = factory_key(index.base_index)
        return f"{base},RFlat" if base else None
    if isinstance(index, faiss.IndexHNSWFlat):
        per_level = faiss.vector_to_array(index.hnsw.cum_nneighbor_per_level)
        return f"HNSW{per_level[2] - per_level[1]},Flat" if len(per_level) > 2 else None
    if isinstance(index, faiss.IndexIVFFlat):
        return f"IVF{index.nlist},Flat"
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return f"IVF{index.nlist},PQ{index.pq.M}x{index.pq.nbits}fs"
    if isinstance(index, faiss.IndexIVFScalarQuantizer) and index.sq.qtype in SQ_TYPES:
        return f"IVF{index.nlist},{SQ_TYPES[index.sq.qtype]}"
    if isinstance(index, faiss.IndexFlat):
        return "Flat"
    return None


def holds_exact_vectors(index: faiss.Index) -> bool:
    """Whether ``reconstruct_n`` gives back the added vectors exactly (flat storage), not a compressed approximation."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return holds_exact_vectors(index.refine_index)
    if isinstance(index, faiss.IndexHNSW):
        return holds_exact_vectors(index.storage)
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat))
