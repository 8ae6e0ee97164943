"""An artifact from an untrusted source: loading refuses with a clear error and executes no code.

The attacker here controls every byte of the directory, manifest included, so checksums are
recomputed after each change (``tests.tamper.resign``): what stops each attack is the reader, not
the checksum. Every refusal is an ``ArtifactError`` naming the file, raised by ``load``, never a
library's error, and never one that waits for the first query.
"""
from __future__ import annotations

import ast
import io
import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tamper import declare_shape, edit_json, edit_npz, npy_bytes, private_copy, redigest, resign, write_archive
from twotower import Retriever
from twotower.artifact import MANIFEST, USER_FEATURES, ArtifactError

PACKAGE = Path(__file__).resolve().parents[1] / "twotower"


class WritesMarker:
    """A pickle payload: unpickling it creates a file. If the file exists, code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def artifact(tmp_path_factory, tmp_path):
    """A private copy of the session's exported artifact, free to tamper with."""
    return private_copy(tmp_path_factory, tmp_path)


def test_pickled_arrays_are_never_unpickled(artifact, tmp_path):
    marker = tmp_path / "code-ran"
    np.savez(artifact / USER_FEATURES, age=np.array([WritesMarker(marker)], dtype=object))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"user_features\.npz is not an archive of plain numpy arrays: .*pickle"):
        Retriever.load(artifact)
    assert not marker.exists()


def test_torch_pickle_in_place_of_safetensors_is_refused(artifact, tmp_path):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"mlp.0.weight": WritesMarker(marker)}, buffer)
    (artifact / "query_tower" / "model.safetensors").write_bytes(buffer.getvalue())
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"query_tower/model\.safetensors is not a safetensors file: .*header"):
        Retriever.load(artifact)
    assert not marker.exists()


def test_hydra_target_in_a_tower_config_is_not_instantiated(artifact, tmp_path):
    marker = tmp_path / "code-ran"
    config_path = artifact / "query_tower" / "config.json"
    config = json.loads(config_path.read_text())
    config["_target_"] = "pathlib.Path.touch"
    config["self"] = str(marker)
    config_path.write_text(json.dumps(config))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"query_tower/config\.json is not a tower config: .*_target_"):
        Retriever.load(artifact)
    assert not marker.exists()


def test_a_huge_declared_table_is_refused_without_allocating_it(artifact):
    config_path = artifact / "candidate_tower" / "config.json"
    config = json.loads(config_path.read_text())
    config["features"][0]["cardinality"] = 10**12  # 10^12 rows x dim floats: terabytes, if it were allocated
    config_path.write_text(json.dumps(config))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"(?s)candidate_tower/model\.safetensors does not fit candidate_tower/config\.json: .*size mismatch"):
        Retriever.load(artifact)


@pytest.mark.parametrize("target", ["file", "directory"])
def test_a_symlink_out_of_the_artifact_is_refused(artifact, tmp_path, target):
    outside = tmp_path / "outside"
    if target == "file":
        outside.write_bytes((artifact / "item_ids.npy").read_bytes())
        (artifact / "item_ids.npy").unlink()
        os.symlink(outside, artifact / "item_ids.npy")
        name = "item_ids.npy"
    else:
        shutil.move(artifact / "query_tower", outside)
        os.symlink(outside, artifact / "query_tower")
        name = "query_tower/"
    resign(artifact)
    with pytest.raises(ArtifactError, match=rf"file name '{name}.*' resolves to .*outside.*, outside .*artifact"):
        Retriever.load(artifact)


def rewrite_npy(path: Path, change) -> None:
    array = np.load(path, allow_pickle=False)
    np.save(path, change(array), allow_pickle=False)


def test_nan_item_vectors_are_refused(artifact):
    def poison(vectors):
        vectors = vectors.copy()
        vectors[5, 0] = np.nan
        return vectors

    rewrite_npy(artifact / "item_vectors.npy", poison)
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"item_vectors\.npy: row 5 holds NaN or infinite values"):
        Retriever.load(artifact)


def test_item_vectors_that_are_not_the_indexs_are_refused(artifact):
    rewrite_npy(artifact / "item_vectors.npy", lambda vectors: vectors[[1, 0, *range(2, len(vectors))]])  # two rows swapped
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"item_vectors\.npy: row 0 differs from vector 0 of index\.faiss .*: the files are not of one export"):
        Retriever.load(artifact)


def _reorder_catalogue(artifact: Path, order: np.ndarray, features_too: bool) -> None:
    """Rows of the catalogue permuted together: ids, vectors, a rebuilt index, the items table and (``features_too``) the item features."""
    vectors = np.load(artifact / "item_vectors.npy")[order]
    np.save(artifact / "item_vectors.npy", vectors, allow_pickle=False)
    rewrite_npy(artifact / "item_ids.npy", lambda ids: ids[order])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(artifact / "index.faiss"))
    pd.read_parquet(artifact / "items.parquet").iloc[order].to_parquet(artifact / "items.parquet", index=False)
    if features_too:
        with np.load(artifact / "item_features.npz") as features:
            edit_npz(artifact / "item_features.npz", **{name: features[name][order] for name in features.files})
    resign(artifact)


def test_item_vectors_reordered_against_their_features_are_refused(artifact):
    order = np.r_[1, 0, 2:200]  # two items swapped in ids, vectors, index and table, not in the stored features
    _reorder_catalogue(artifact, order, features_too=False)
    with pytest.raises(ArtifactError, match=r"item_vectors\.npy: row 0 differs by .* from the candidate tower's vector of item_features\.npz row 0"):
        Retriever.load(artifact)


def test_a_catalogue_reordered_against_the_users_histories_is_refused(artifact):
    """Everything about the items permuted consistently: what still points at rows (histories) would name other items."""
    _reorder_catalogue(artifact, np.random.default_rng(0).permutation(200), features_too=True)
    with pytest.raises(ArtifactError, match=r"user_histories\.npz: user row \d+'s 'history' names item rows .* the catalogue's rows were reordered"):
        Retriever.load(artifact)


def test_counts_that_are_not_the_indexs_are_refused(artifact):
    edit_json(artifact / MANIFEST, lambda m: m["counts"].update(indexed=201))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"manifest\.json: counts\.indexed 201, but index\.faiss holds vectors: 200"):
        Retriever.load(artifact)


@pytest.mark.parametrize("fault", ["an index out of range", "falling offsets", "an interaction fewer than counted"])
def test_a_malformed_seen_table_is_refused(artifact, fault):
    with np.load(artifact / "user_seen.npz") as seen:
        indptr, indices = seen["indptr"].copy(), seen["indices"].copy()
    if fault == "an index out of range":
        indices[7] = 200  # once: silently excluded nothing
        message = r"user_seen\.npz: indices holds values 0 to 200, outside 0\.\.199"
    elif fault == "falling offsets":
        indptr[3], indptr[4] = indptr[4], indptr[3]  # once: a user's seen items were an empty or reversed slice
        message = r"user_seen\.npz: indptr runs from 0 to 6000 and must rise from 0 to the 6000 indices, never falling"
    else:
        indptr[-1], indices = indptr[-1] - 1, indices[:-1]
        message = r"user_seen\.npz: holds interactions: 5999, but manifest\.json counts\.interactions 6000"
    edit_npz(artifact / "user_seen.npz", indptr=indptr, indices=indices)
    resign(artifact)
    with pytest.raises(ArtifactError, match=message):
        Retriever.load(artifact)


def test_a_query_tower_other_than_the_exported_one_is_refused(artifact):
    """Same config and vocabulary, other weights (as a copy of another run's query_tower/ would have), the files re-signed."""
    weights = load_file(artifact / "query_tower" / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, artifact / "query_tower" / "model.safetensors")
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"query_tower: config\.json, vocab\.json and model\.safetensors have digest [0-9a-f]{64}, "
                                            r"manifest\.json records [0-9a-f]{64} for query_tower \(a tower of another model"):
        Retriever.load(artifact)


def test_a_changed_vocabulary_is_refused(artifact):
    edit_json(artifact / "query_tower" / "vocab.json", lambda v: v["features"]["age"].update(mean=1e6))  # every raw row's age would shift
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"query_tower: config\.json, vocab\.json and model\.safetensors have digest"):
        Retriever.load(artifact)


@pytest.mark.parametrize("fault", ["a repeated id", "an id the vocabulary does not know", "ids 1,000 characters wide", "an empty id"])
def test_item_ids_that_do_not_name_the_index_rows_are_refused(artifact, fault):
    ids = np.load(artifact / "item_ids.npy").tolist()
    if fault == "a repeated id":
        ids[1] = ids[0]
        message = r"item_ids\.npy repeats id\(s\) \['0'\]"
    elif fault == "an id the vocabulary does not know":
        ids[ids.index("5")] = "zzz"
        message = r"item_ids\.npy lacks id\(s\) \['5'\] that candidate_tower/vocab\.json holds \(1 in all\)"
    elif fault == "an empty id":  # serving pads short answers with '': the item would read as padding
        ids[3] = ""
        message = r"item_ids\.npy holds an empty id at row 3"
    else:
        ids[0] = "0" + " " * 999
        message = r"item_ids\.npy holds ids up to 1000 characters wide; ids have at most 256"
    np.save(artifact / "item_ids.npy", np.asarray(ids, dtype=str))
    resign(artifact)
    with pytest.raises(ArtifactError, match=message):
        Retriever.load(artifact)


def test_a_tower_that_builds_but_cannot_encode_is_refused_at_load_not_at_query_time(artifact):
    """An attacker who also records the new digest: what stops the change is that load runs the towers once."""
    edit_json(artifact / "query_tower" / "config.json", lambda c: c.update(dropout=float("nan")))
    redigest(artifact)
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"query_tower/config\.json: the tower cannot encode its inputs: RuntimeError\('dropout probability"):
        Retriever.load(artifact)  # once: loaded, and every query raised


def test_stored_features_outside_the_towers_tables_are_refused_at_load_not_at_query_time(artifact):
    with np.load(artifact / USER_FEATURES) as features:
        history = features["history"].copy()
    history[0, 0] = 10**6  # once: an IndexError from the embedding at the first query for user 0
    edit_npz(artifact / USER_FEATURES, history=history)
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"user_features\.npz: array 'history' holds values 0 to 1000000, outside 0\.\.200"):
        Retriever.load(artifact)


@pytest.mark.parametrize("file, content, message", [
    ("manifest.json", "[]", r"manifest\.json holds a JSON list, not an object"),
    ("index_infos.json", "[]", r"index_infos\.json holds a JSON list, not an object"),
    ("index_infos.json", '{"key": "Flat", "search_params": {"efSearch": 1e9}}', r"index_infos\.json: search parameter efSearch=1000000000\.0; known:"),
    ("index_infos.json", '{"key": "Flat", "search_params": {"nprobe": 4}}', r"index_infos\.json: search_params \{'nprobe': 4\} do not apply to index\.faiss"),
    ("index_infos.json", '{"key": "Flat", "search_params": {}, "fetch_factor": 0}', r"index_infos\.json: fetch_factor=0, expected an integer in \[1, 1024\]"),
    ("index_infos.json", '{"key": "Flat", "search_params": {}, "fetch_factor": 2.5}', r"index_infos\.json: fetch_factor=2\.5, expected an integer"),
    ("query_tower/vocab.json", '{"features": {}}', r"query_tower/vocab\.json is \{'features': \{\}\}, expected an object with 'features'"),
    ("candidate_tower/vocab.json", "[" * 100_000 + "]" * 100_000, r"candidate_tower/vocab\.json is not valid JSON"),
    ("query_tower/config.json", "[1]", r"query_tower/config\.json is not a tower config"),
])
def test_malformed_json_is_refused_naming_the_file(artifact, file, content, message):
    (artifact / file).write_text(content)
    if file != MANIFEST:
        resign(artifact)
    with pytest.raises(ArtifactError, match=message):
        Retriever.load(artifact)


def test_a_json_manifest_of_the_wrong_shape_is_refused(artifact):
    edit_json(artifact / MANIFEST, lambda m: m.pop("towers"))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"manifest\.json: towers is None, expected the digest of 'query_tower' and 'candidate_tower'"):
        Retriever.load(artifact)
    edit_json(artifact / MANIFEST, lambda m: m["files"].update({"index.faiss": "sha256"}))
    with pytest.raises(ArtifactError, match=r"manifest\.json: the record of 'index\.faiss' is 'sha256', expected"):
        Retriever.load(artifact)


def test_arrays_declaring_more_than_their_file_holds_are_refused_without_allocating(artifact):
    """A header declaring 10**12 elements: numpy would allocate terabytes before noticing the file is short."""
    path = artifact / "item_ids.npy"
    path.write_bytes(declare_shape(path.read_bytes(), b"(200,)", b"(1000000000000,)"))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"item_ids\.npy is not a plain numpy array: mmap length is greater than file size"):
        Retriever.load(artifact)


def test_archive_members_declaring_more_than_they_hold_are_refused_without_allocating(artifact):
    with np.load(artifact / "user_seen.npz") as seen:
        indptr, indices = npy_bytes(seen["indptr"]), npy_bytes(seen["indices"])
    write_archive(artifact / "user_seen.npz", {"indptr.npy": indptr, "indices.npy": declare_shape(indices, b"(6000,)", b"(1000000000000,)")})
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"user_seen\.npz is not an archive of plain numpy arrays: member 'indices\.npy' declares shape \(1000000000000,\)"):
        Retriever.load(artifact)


SERVING_MODULES = ("artifact.py", "artifact_checks.py", "retriever.py", "retriever_arguments.py", "index.py", "rerank.py")


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text())
    return [(ast.unparse(node.func), node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def keyword(node: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in node.keywords if k.arg == name), None)


def test_the_package_never_unpickles_and_serving_never_instantiates():
    """A source scan: what could run code from a file is absent, or pinned to its safe form."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if "import pickle" in source or "from pickle" in source or "import dill" in source:
            found.append(f"{path.name}: imports pickle")
        for name, node in calls(path):
            where = f"{path.relative_to(PACKAGE)}:{node.lineno} {name}"
            if name == "torch.load" and keyword(node, "weights_only") is not True:
                found.append(f"{where} without weights_only=True")
            if name in ("np.load", "numpy.load") and keyword(node, "allow_pickle") is not False:
                found.append(f"{where} without allow_pickle=False")
            if name in ("eval", "exec", "torch.jit.load", "pickle.load", "pickle.loads"):
                found.append(where)
            if path.name in SERVING_MODULES and name in ("instantiate", "hydra.utils.instantiate", "get_class", "get_method", "importlib.import_module"):
                found.append(f"{where} in a serving module")
    assert not found, found
