"""FAISS index types on a large synthetic catalogue embedded by a trained candidate tower.

For each index type, in one run on one machine: build time, size, recall@10 against exact search,
batched QPS next to exact flat search's, single-query latency, and the Retriever's single-query
``recommend`` latency on the default (``auto``) index.

    python benchmarks/index.py --items 1000000            # results -> benchmarks/results/index.md

The towers are trained here on a small synthetic dataset (content-only, so every new item gets a
vector from its genres, title and price); the catalogue is then a much larger synthetic items
table encoded by that tower, and the queries are the validation users' real query vectors.
Search parameters are tuned on half of the queries and recall is measured on the other half.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twotower.data.sources.synthetic import SyntheticSource  # noqa: E402
from twotower.exporting import encode  # noqa: E402
from twotower.index import IndexSpec, build_index, exact_scores_of, exact_search, recall_at, search, tune  # noqa: E402
from twotower.retriever import Retriever  # noqa: E402
from twotower.training import train  # noqa: E402

INDEXES = ("ivf_flat", "ivf_sq", "ivf_pq", "hnsw")  # plus "flat" (exact) as the baseline and "auto" as the default


def trained_model(workdir: Path, users: int, epochs: int):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "data=synthetic", "data.use_ids=false", f"data.source.n_users={users}", "data.source.n_items=2000",
            f"trainer.max_epochs={epochs}", "logger=none", "callbacks=none", "test=false", f"paths.output_dir={workdir}",
            "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
        ])
        index_cfgs = {name: compose(config_name="export", overrides=[f"index={name}", "checkpoint=x", "output_dir=x"]).index for name in (*INDEXES, "auto")}
    metrics, objects = train(cfg)
    return objects["module"].model.eval(), objects["datamodule"], metrics, index_cfgs


def qps(search_k, queries: np.ndarray, k: int = 10, repeat: int = 1) -> float:
    """Batched queries per second of ``search_k(queries, k)``."""
    start = time.perf_counter()
    for _ in range(repeat):
        search_k(queries, k)
    return repeat * len(queries) / (time.perf_counter() - start)


def recalls(rows: np.ndarray, exact: tuple[np.ndarray, np.ndarray], vectors: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    exact_scores, exact_rows = exact
    found = exact_scores_of(vectors, queries, rows)
    return {f"recall@{k}": recall_at(rows[:, :k], exact_rows[:, :k], exact_scores[:, :k], found[:, :k]) for k in (10, 100)}


def single_latency(fn, n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=2000, help="synthetic users the towers are trained on (query vectors come from them)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--indexes", nargs="+", default=list(INDEXES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index.md"))
    parser.add_argument("--workdir", default="/tmp/twotower-index-bench")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model, datamodule, metrics, index_cfgs = trained_model(Path(args.workdir), args.users, args.epochs)
    print(f"trained in {time.perf_counter() - t0:.0f}s: val/recall@20 {metrics.get('val/recall@20', float('nan')):.3f}", flush=True)

    t0 = time.perf_counter()
    items = SyntheticSource(n_users=1, n_items=args.items, interactions_per_user=1, seed=1).load().items
    features = datamodule.prepared.preprocessor.transform("candidate", items, "synthetic catalogue")
    vectors = encode(model.candidate_tower, args.items, lambda rows, features=features: {k: v[rows] for k, v in features.items()}, torch.device("cpu"), 65536)
    item_features = {name: values.numpy() for name, values in features.items()}  # the Retriever's history path reads them
    del features
    users = datamodule.prepared.eval_users["val"]
    queries = encode(model.query_tower, len(users), lambda rows: datamodule.eval_batch(users[rows], "val").query, torch.device("cpu"), 4096)
    tune_q, eval_q = queries[0::2].copy(), queries[1::2].copy()
    print(f"catalogue {vectors.shape} and {len(queries)} queries in {time.perf_counter() - t0:.0f}s", flush=True)

    threads = faiss.omp_get_max_threads()
    exact = exact_search(vectors, eval_q, 100)
    flat, _ = build_index(vectors, IndexSpec(key="Flat"))
    flat_qps = qps(lambda q, k: flat.search(q, k), eval_q)
    rows = [{"index": "flat (exact)", "key": "Flat", "build_s": 0.0, "size_mb": vectors.nbytes / 2**20, "recall@10": 1.0, "recall@100": 1.0,
             "params": {}, "fetch_factor": 1, "qps": flat_qps}]
    # Exact search without faiss: a plain matrix product per chunk of items and a top-k merge (twotower.index.exact_search).
    rows.append({"index": "matrix product (exact)", "key": "numpy matmul + top-k", "build_s": 0.0, "size_mb": vectors.nbytes / 2**20,
                 "recall@10": 1.0, "recall@100": 1.0, "params": {}, "fetch_factor": 1, "qps": qps(lambda q, k: exact_search(vectors, q, k), eval_q)})
    faiss.omp_set_num_threads(1)
    rows[0]["single_query"] = single_latency(lambda i: flat.search(eval_q[i % len(eval_q)][None], 10), 100)
    rows[1]["single_query"] = single_latency(lambda i: exact_search(vectors, eval_q[i % len(eval_q)][None], 10), 100)
    faiss.omp_set_num_threads(threads)
    print(f"exact: {flat_qps:.0f} QPS", flush=True)

    default_key, default_fetch_factor, built = None, 1, {}
    for name in [*args.indexes, "auto"]:
        spec = IndexSpec.from_config(dict(index_cfgs[name])).resolve(args.items, vectors.shape[1])
        if name == "auto":
            default_key, default_fetch_factor = spec.key, spec.fetch_factor
            if any(r["key"] == spec.key for r in rows):
                continue
        start = time.perf_counter()
        index, _ = build_index(vectors, spec)
        build_s = time.perf_counter() - start
        params = {**spec.search, **tune(index, vectors, tune_q, spec)}
        found = search(index, vectors, eval_q, 100, spec.fetch_factor)
        searched = lambda q, k, index=index, factor=spec.fetch_factor: search(index, vectors, q, k, factor)  # noqa: E731
        row = {"index": name, "key": spec.key, "build_s": build_s, "size_mb": _size_mb(index), **recalls(found, exact, vectors, eval_q),
               "params": params, "fetch_factor": spec.fetch_factor, "target": f"recall@{spec.target_k} {spec.target_recall}", "qps": qps(searched, eval_q)}
        faiss.omp_set_num_threads(1)
        row["single_query"] = single_latency(lambda i, searched=searched: searched(eval_q[i % len(eval_q)][None], 10), 500)
        faiss.omp_set_num_threads(threads)
        rows.append(row)
        built[spec.key] = index
        print(json.dumps(row), flush=True)
    default_index = built.get(default_key, flat)

    # The Retriever end to end (query tower + search + seen-item exclusion) on the default index, 1 thread.
    retriever = Retriever(
        None, default_index, model.query_tower, model.candidate_tower, datamodule.prepared.preprocessor,
        np.asarray(items["item_id"], dtype=str), vectors, None, np.asarray(datamodule.prepared.user_rows, dtype=str),
        {k: v.numpy() for k, v in datamodule.prepared.users.columns.items()},
        {"indptr": datamodule.prepared.known["test"].indptr.numpy(), "indices": datamodule.prepared.known["test"].indices.numpy()},
        {"items": datamodule.prepared.train_pairs[:, 1].numpy(), "times": np.zeros(len(datamodule.prepared.train_pairs))},
        None, item_features, {datamodule.prepared.history_name: datamodule.prepared.histories["test"].numpy()}, default_fetch_factor,
    )
    user_ids = np.asarray(datamodule.prepared.user_rows, dtype=str)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    recommend = single_latency(lambda i: retriever.recommend([user_ids[i % len(user_ids)]], k=10), 500)
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(threads)
    write_report(Path(args.out), args, rows, default_key, recommend, threads)


def _size_mb(index: faiss.Index) -> float:
    return faiss.serialize_index(index).nbytes / 2**20


def write_report(path: Path, args, rows, default_key, recommend, threads) -> None:
    flat_qps = rows[0]["qps"]
    lines = [
        "# Index benchmark",
        "",
        f"`python benchmarks/index.py --items {args.items} --users {args.users} --epochs {args.epochs} --indexes {' '.join(args.indexes)}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {threads} faiss threads (batched), shared 2-core dev box (noisy); "
        f"faiss {faiss.__version__}, torch {torch.__version__}. Catalogue: {args.items:,} synthetic items embedded by a trained "
        f"content-only candidate tower (dim 64). Queries: validation users' query vectors, tuned on one half, measured on the other.",
        "",
        "Recall and QPS include the exact re-rank of `fetch_factor` x k candidates (with the item vectors serving holds anyway)",
        "where the index sets one; `x Flat size` is the index file against Flat's (the vectors).",
        "",
        "| index | factory key | build s | size MB | x Flat size | search params | fetch factor | recall@10 vs exact | recall@100 vs exact | batched QPS | x exact QPS | 1-query p50 ms | 1-query p99 ms |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        single = r.get("single_query", {})
        default = " (default)" if r["key"] == default_key else ""
        lines.append(
            f"| {r['index']}{default} | `{r['key']}` | {r['build_s']:.1f} | {r['size_mb']:.0f} | {r['size_mb'] / rows[0]['size_mb']:.2f} | {json.dumps(r['params'])} | "
            f"{r['fetch_factor']} | {r['recall@10']:.3f} | {r['recall@100']:.3f} | "
            f"{r['qps']:.0f} | {r['qps'] / flat_qps:.1f} | {single.get('p50_ms', float('nan')):.2f} | {single.get('p99_ms', float('nan')):.2f} |"
        )
    lines += [
        "",
        f"`Retriever.recommend([user], k=10)` on the default index (query tower + search + seen-item exclusion, "
        f"torch and faiss at 1 thread): p50 {recommend['p50_ms']:.2f} ms, p99 {recommend['p99_ms']:.2f} ms over 500 calls.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps({"items": args.items, "rows": rows, "default": default_key, "recommend": recommend}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
