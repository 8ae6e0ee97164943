"""An artifact from an untrusted source: loading refuses with a clear error and executes no code.

The attacker here controls every byte of the directory, manifest included, so checksums are
recomputed after each change: what stops each attack is the reader, not the checksum.
"""
from __future__ import annotations

import ast
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export_fixtures import trained_and_exported
from twotower import Retriever
from twotower.artifact import MANIFEST, USER_FEATURES, ArtifactError, sha256_of

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
    source = trained_and_exported(tmp_path_factory.getbasetemp() / "export-shared")[1]
    copy = tmp_path / "artifact"
    shutil.copytree(source, copy)
    return copy


def resign(artifact: Path) -> None:
    """What an attacker does after tampering: make every checksum and size in the manifest match again."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    for name in manifest["files"]:
        path = artifact / name
        manifest["files"][name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def test_pickled_arrays_are_never_unpickled(artifact, tmp_path):
    marker = tmp_path / "code-ran"
    np.savez(artifact / USER_FEATURES, age=np.array([WritesMarker(marker)], dtype=object))
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"user_features\.npz is not an archive of plain numpy arrays: .*allow_pickle=False"):
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


SERVING_MODULES = ("artifact.py", "retriever.py", "index.py", "rerank.py")


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
