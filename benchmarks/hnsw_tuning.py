"""HNSW's build parameters on the index benchmark's catalogue: links per node (M), efConstruction and a re-ranked fetch.

The same catalogue and queries as ``benchmarks/index.py`` (a content-only tower trained on synthetic
data, a large synthetic catalogue encoded by it, validation users' query vectors; tuned on one half,
measured on the other). Each setting is built, its efSearch tuned for recall@10 0.95 as export does,
and measured against exact search in the same run.

    python benchmarks/hnsw_tuning.py --items 200000    # -> benchmarks/results/index_hnsw.md
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import faiss
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from index import _size_mb, qps, recalls, trained_model  # noqa: E402

from twotower.data.sources.synthetic import SyntheticSource  # noqa: E402
from twotower.exporting import encode  # noqa: E402
from twotower.index import IndexSpec, build_index, exact_search, search, tune  # noqa: E402

# (factory key, efConstruction, fetch_factor): the shipped setting first.
SETTINGS = (("HNSW32,Flat", 80, 1), ("HNSW32,Flat", 80, 10), ("HNSW32,SQ8", 80, 10), ("HNSW32,Flat", 200, 1), ("HNSW64,Flat", 200, 1),
            ("HNSW32,Flat", 400, 1), ("HNSW64,Flat", 400, 1))
EF_SEARCH = [16, 32, 64, 128, 256, 512, 1024, 2048]  # past the shipped config's 512, to see where recall@10 0.95 lies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index_hnsw.md"))
    parser.add_argument("--workdir", default="/tmp/twotower-hnsw-bench")
    args = parser.parse_args()

    model, datamodule, _, index_cfgs = trained_model(Path(args.workdir), args.users, args.epochs)
    items = SyntheticSource(n_users=1, n_items=args.items, interactions_per_user=1, seed=1).load().items
    features = datamodule.prepared.preprocessor.transform("candidate", items, "synthetic catalogue")
    vectors = encode(model.candidate_tower, args.items, lambda rows: {k: v[rows] for k, v in features.items()}, torch.device("cpu"), 65536)
    users = datamodule.prepared.eval_users["val"]
    queries = encode(model.query_tower, len(users), lambda rows: datamodule.eval_batch(users[rows], "val").query, torch.device("cpu"), 4096)
    tune_q, eval_q = queries[0::2].copy(), queries[1::2].copy()
    exact = exact_search(vectors, eval_q, 100)
    exact_qps = qps(lambda q, k: exact_search(vectors, q, k), eval_q)

    rows = []
    for key, ef_construction, fetch_factor in SETTINGS:
        spec = IndexSpec.from_config({**dict(index_cfgs["hnsw"]), "key": key, "ef_construction": ef_construction, "fetch_factor": fetch_factor,
                                      "tune": {"name": "efSearch", "values": EF_SEARCH}})
        spec = spec.resolve(args.items, vectors.shape[1])
        start = time.perf_counter()
        index, _ = build_index(vectors, spec)
        build_s = time.perf_counter() - start
        params = tune(index, vectors, tune_q, spec)
        found = search(index, vectors, eval_q, 100, fetch_factor)
        row = {"key": key, "ef_construction": ef_construction, "fetch_factor": fetch_factor, "build_s": build_s, "size_mb": _size_mb(index),
               "params": params, **recalls(found, exact, vectors, eval_q),
               "x_exact_qps": qps(lambda q, k, index=index, f=fetch_factor: search(index, vectors, q, k, f), eval_q) / exact_qps}
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        "# HNSW build parameters",
        "",
        f"`python benchmarks/hnsw_tuning.py --items {args.items} --users {args.users} --epochs {args.epochs}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {faiss.omp_get_max_threads()} faiss threads, shared 2-core dev box; "
        f"faiss {faiss.__version__}. Catalogue: {args.items:,} synthetic items embedded by a trained content-only tower (dim 64), "
        "the index benchmark's; efSearch tuned for recall@10 0.95 on half the validation users' queries, measured on the other half.",
        "",
        "| factory key | efConstruction | fetch factor | build s | size MB | efSearch | recall@10 | recall@100 | x exact QPS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| `{r['key']}` | {r['ef_construction']} | {r['fetch_factor']} | {r['build_s']:.1f} | {r['size_mb']:.0f} | "
                     f"{r['params'].get('efSearch', float('nan')):.0f} | {r['recall@10']:.3f} | {r['recall@100']:.3f} | {r['x_exact_qps']:.1f} |")
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"items": args.items, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
