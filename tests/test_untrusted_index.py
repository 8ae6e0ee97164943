"""``index.faiss`` from an untrusted source: read without a crafted length making faiss allocate what the file
cannot hold, checked where faiss does not check, and compared with the manifest and the item vectors."""
from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from tests.tamper import edit_json, private_copy, resign
from twotower import Retriever
from twotower.artifact import ArtifactError
from twotower.index import IndexSpec, build_index, check_structure, factory_key, holds_exact_vectors, read_index_file

SHIPPED = {"Flat": True, "HNSW32,Flat": True, "IVF16,Flat": True, "IVF16,PQ8x4fs,RFlat": True, "IVF16,PQ8x4fs": False}


@pytest.fixture
def artifact(tmp_path_factory, tmp_path):
    return private_copy(tmp_path_factory, tmp_path)


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def with_index(artifact: Path, index: faiss.Index, key: str, search_params: dict) -> None:
    """Replace the artifact's index, and say so in the manifest and index_infos.json, as an export of that index would."""
    faiss.write_index(index, str(artifact / "index.faiss"))
    edit_json(artifact / "manifest.json", lambda m: m["index"].update(key=key, search_params=search_params))
    edit_json(artifact / "index_infos.json", lambda i: i.update(key=key, search_params=search_params))
    resign(artifact)


def hnsw_over(artifact: Path) -> faiss.Index:
    index = faiss.index_factory(64, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(np.load(artifact / "item_vectors.npy"))
    return index


@pytest.mark.parametrize("key, exact", SHIPPED.items())
def test_the_index_kinds_twotower_builds_are_read_back_and_recognised(tmp_path, key, exact):
    vectors = unit_vectors(2_000)
    index, _ = build_index(vectors, IndexSpec(key=key))
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    read = read_index_file(tmp_path / "index.faiss")
    assert (factory_key(read), holds_exact_vectors(read), read.ntotal) == (key, exact, 2_000)


def test_an_hnsw_artifact_is_read_through_the_guard_and_serves_like_brute_force(artifact):
    with_index(artifact, hnsw_over(artifact), "HNSW32,Flat", {"efSearch": 128})
    retriever = Retriever.load(artifact)
    users = ["0", "1", "7", "42", "299"]
    got = retriever.recommend(users, k=10)
    rows = [retriever._user_row[u] for u in users]
    queries = retriever.encode_queries({n: torch.from_numpy(a[rows]) for n, a in retriever.user_features.items()})
    scores = queries @ np.asarray(retriever.item_vectors).T  # (U, n_items): brute force
    for q, row in enumerate(rows):
        scores[q, retriever._seen_of(row)] = -np.inf
        top = np.sort(scores[q])[::-1][:10]
        np.testing.assert_allclose(got.scores[q], top, atol=1e-5)  # ties tolerated: the scores, not the order of equal ones


def test_an_index_of_another_kind_than_the_manifest_records_is_refused(artifact):
    faiss.write_index(hnsw_over(artifact), str(artifact / "index.faiss"))  # the manifest still says Flat
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"index\.faiss: is a HNSW32,Flat, but manifest\.json records index key Flat"):
        Retriever.load(artifact)


def test_an_hnsw_link_outside_the_index_is_refused(artifact):
    index = hnsw_over(artifact)
    neighbors = faiss.rev_swig_ptr(index.hnsw.neighbors.data(), index.hnsw.neighbors.size())
    neighbors[5] = 10**6  # older faiss read it as is, and followed it at the first search that reached node 0
    with pytest.raises(ValueError, match=r"in memory: HNSW graph links to nodes -1 to 1000000, outside 0\.\.199"):
        check_structure(index, "in memory")  # twotower's own check, for the faiss versions that do not make it
    with_index(artifact, index, "HNSW32,Flat", {})
    # Newer faiss refuses it itself (in the guarded child), older ones pass it to twotower's check.
    with pytest.raises(ArtifactError, match=r"index\.faiss: .*(HNSW graph links to nodes -1 to 1000000, outside 0\.\.199|neighbors\[5\] = 1000000 out of range)"):
        Retriever.load(artifact)


def test_inverted_lists_holding_a_row_twice_are_refused(tmp_path):
    vectors = unit_vectors(500)
    index, _ = build_index(vectors, IndexSpec(key="IVF4,Flat"))
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    first = next(l for l in range(4) if lists.list_size(l))
    duplicate = faiss.rev_swig_ptr(lists.get_ids(first), lists.list_size(first))[0]
    second = next(l for l in range(4) if l != first and lists.list_size(l))
    lists.update_entry(second, 0, int(duplicate), faiss.swig_ptr(vectors[duplicate].view(np.uint8)))
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    with pytest.raises(ValueError, match=r"index\.faiss: the inverted lists hold row \d+ (0|2) times"):
        read_index_file(tmp_path / "index.faiss")


def test_headers_declaring_64_gb_are_refused_without_allocating_it(tmp_path_factory, tmp_path):
    """In a process whose address space ends 1 GB above what loading needs: faiss once allocated what the header declared."""
    flat = private_copy(tmp_path_factory, tmp_path / "flat")
    data = bytearray((flat / "index.faiss").read_bytes())  # IxFI, d, ntotal at 8, ..., the float count at 37
    data[8:16], data[37:45] = struct.pack("<q", 250_000_000), struct.pack("<Q", 16_000_000_000)  # 64 GB of floats
    (flat / "index.faiss").write_bytes(bytes(data))
    resign(flat)
    hnsw = private_copy(tmp_path_factory, tmp_path / "hnsw")
    with_index(hnsw, hnsw_over(hnsw), "HNSW32,Flat", {})
    data = bytearray((hnsw / "index.faiss").read_bytes())  # IHNf and its header, then the count of HNSW level probabilities at 37
    data[37:45] = struct.pack("<Q", 8_000_000_000)  # 64 GB of doubles
    (hnsw / "index.faiss").write_bytes(bytes(data))
    resign(hnsw)
    script = textwrap.dedent(f"""
        import resource
        from twotower import Retriever
        with open("/proc/self/statm") as statm:
            in_use = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (in_use + (1 << 30), resource.RLIM_INFINITY))
        for path in ({str(flat)!r}, {str(hnsw)!r}):
            try:
                Retriever.load(path)
                print("loaded")
            except Exception as err:
                print(type(err).__name__, str(err).splitlines()[0])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    flat_result, hnsw_result = done.stdout.strip().splitlines()
    assert flat_result.startswith("ArtifactError") and "flat index header declares 250000000 vectors of dim 64" in flat_result, flat_result
    assert hnsw_result.startswith("ArtifactError") and "index.faiss: faiss cannot read it within" in hnsw_result, hnsw_result
