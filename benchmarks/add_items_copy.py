"""What thread-safe ``Retriever.add_items`` costs: adding into a copy of the index (clone + add)
against adding in place, for flat and HNSW indexes of growing catalogues, side by side in one run.

    python benchmarks/add_items_copy.py   # writes benchmarks/results/add_items_copy.{json,md}
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np

DIM, NEW_ITEMS, REPEATS = 64, 10, 5
RESULTS = Path(__file__).parent / "results"


def build(key: str, n: int, rng: np.random.Generator) -> faiss.Index:
    index = faiss.index_factory(DIM, key, faiss.METRIC_INNER_PRODUCT)
    index.add(rng.standard_normal((n, DIM)).astype(np.float32))
    return index


def best_ms(index: faiss.Index, new: np.ndarray, copy: bool) -> float:
    times = []
    for _ in range(REPEATS):
        target = None if copy else faiss.clone_index(index)  # untimed: each in-place repeat starts from the same index
        start = time.perf_counter()
        (faiss.clone_index(index) if copy else target).add(new)
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main() -> None:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    new = rng.standard_normal((NEW_ITEMS, DIM)).astype(np.float32)
    rows = []
    for key, sizes in (("Flat", (10_000, 100_000, 1_000_000)), ("HNSW32", (10_000, 100_000))):
        for n in sizes:
            index = build(key, n, rng)
            in_place, copied = best_ms(index, new, copy=False), best_ms(index, new, copy=True)
            rows.append({"index": key, "items": n, "add_in_place_ms": round(in_place, 2), "clone_and_add_ms": round(copied, 2),
                         "index_mb": round(faiss.serialize_index(index).nbytes / 2**20, 1)})
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "faiss_threads": 1, "dim": DIM, "new_items": NEW_ITEMS,
            "note": "best of 5; in-place add is what add_items did before; it raced with concurrent searches"}
    (RESULTS / "add_items_copy.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| index | items | index MB | add in place (ms) | clone + add (ms) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['index']} | {r['items']:,} | {r['index_mb']} | {r['add_in_place_ms']} | {r['clone_and_add_ms']} |" for r in rows]
    (RESULTS / "add_items_copy.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
