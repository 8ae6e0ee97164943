"""The artifact directory: round trip, atomic commit, and refusals that name the file and both values."""
import json

import numpy as np
import pytest
import torch

from twotower.artifact import (
    FORMAT_VERSION, INDEX, ITEM_IDS, ITEM_VECTORS, MANIFEST, REQUIRED, Artifact, ArtifactError, ArtifactWriter, sha256_of,
)


def write(path, **manifest):
    """An artifact holding every required name (real arrays/JSON/tensors where tests read them back)."""
    with ArtifactWriter(path) as out:
        for name in REQUIRED:
            out.file(name).write_bytes(b"x" * 10)
        out.array(ITEM_IDS, np.array(["1", "22", "333"]))
        out.array(ITEM_VECTORS, np.arange(6, dtype=np.float32).reshape(3, 2))
        out.arrays("user_seen.npz", {"indptr": np.array([0, 2]), "indices": np.array([4, 5])})
        out.json("index_infos.json", {"key": "Flat", "search_params": {}})
        out.tensors("query_tower/model.safetensors", {"w": torch.ones(2, 3)})
        return out.commit({"dim": 2, **manifest})


def test_round_trip(tmp_path):
    path = write(tmp_path / "art", counts={"items": 3})
    art = Artifact.open(path)
    assert art.manifest["format_version"] == FORMAT_VERSION and art.manifest["counts"] == {"items": 3}
    assert art.array(ITEM_IDS).tolist() == ["1", "22", "333"]
    np.testing.assert_array_equal(art.array(ITEM_VECTORS, mmap=True), np.arange(6).reshape(3, 2))
    assert art.arrays("user_seen.npz")["indices"].tolist() == [4, 5]
    assert art.json("index_infos.json") == {"key": "Flat", "search_params": {}}
    assert torch.equal(art.tensors("query_tower/model.safetensors")["w"], torch.ones(2, 3))
    assert art.manifest["files"][INDEX] == {"sha256": sha256_of(path / INDEX), "bytes": 10}
    assert not (tmp_path / "art.partial").exists()


def test_an_error_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ArtifactWriter(tmp_path / "art") as out:
            out.json("index_infos.json", {})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_an_incomplete_artifact(tmp_path):
    with pytest.raises(ArtifactError, match=r"lacks required file\(s\) \['index.faiss'"):
        with ArtifactWriter(tmp_path / "art") as out:
            out.json("index_infos.json", {})
            out.commit({})
    assert not (tmp_path / "art").exists()


def test_an_existing_artifact_is_replaced_but_other_directories_are_not(tmp_path):
    write(tmp_path / "art", version="old")
    write(tmp_path / "art", version="new")
    assert Artifact.open(tmp_path / "art").manifest["version"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.csv").write_text("1")
    with pytest.raises(ArtifactError, match="is not a twotower artifact"):
        ArtifactWriter(tmp_path / "data")


def test_a_changed_file_is_refused_naming_both_checksums(tmp_path):
    path = write(tmp_path / "art")
    recorded = sha256_of(path / INDEX)
    (path / INDEX).write_bytes(b"y" * 10)  # same size, other content
    with pytest.raises(ArtifactError, match=f"index.faiss has sha256 {sha256_of(path / INDEX)}, manifest.json records {recorded}"):
        Artifact.open(path)


def test_a_truncated_file_is_refused_naming_both_sizes(tmp_path):
    path = write(tmp_path / "art")
    (path / INDEX).write_bytes(b"x" * 4)
    with pytest.raises(ArtifactError, match="index.faiss has 4 bytes, manifest.json records 10"):
        Artifact.open(path)


def test_another_format_version_is_refused(tmp_path):
    path = write(tmp_path / "art")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"manifest.json: format_version is {FORMAT_VERSION + 1}, this twotower reads {FORMAT_VERSION}"):
        Artifact.open(path)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "a/../../b", "a\\..\\b"])
def test_names_outside_the_directory_are_refused(tmp_path, name):
    path = write(tmp_path / "art")
    (tmp_path / "outside.txt").write_text("secret")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_of(tmp_path / "outside.txt"), "bytes": 6}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="is not a plain relative path inside the artifact"):
        Artifact.open(path)


def test_unfinished_and_missing_artifacts_are_refused(tmp_path):
    path = write(tmp_path / "art")
    path.rename(tmp_path / "art.partial")  # as if killed between writing the manifest and the rename
    with pytest.raises(ArtifactError, match=r"art.partial is an unfinished export"):
        Artifact.open(tmp_path / "art.partial")
    with pytest.raises(ArtifactError, match=r"manifest.json does not exist: .* is not a complete twotower artifact"):
        Artifact.open(tmp_path)


def test_object_arrays_are_refused_at_write_time(tmp_path):
    with ArtifactWriter(tmp_path / "art") as out:
        with pytest.raises(TypeError, match="item_ids.npy: object arrays would need pickle"):
            out.array(ITEM_IDS, np.array(["a", None], dtype=object))
