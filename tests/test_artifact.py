"""The artifact directory: round trip, atomic commit, and refusals that name the file and both values."""
import hashlib
import json
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tests.tamper import declare_shape, npy_bytes, resign, write_archive
from twotower.artifact import (
    FORMAT_VERSION,
    INDEX,
    ITEM_IDS,
    ITEM_VECTORS,
    MANIFEST,
    REQUIRED,
    STAGING_MARKER,
    Artifact,
    ArtifactError,
    ArtifactWriter,
    sha256_of,
)
from twotower.file_lock import LockTimeout, exclusive_lock


def write(path, wait_s=60.0, **manifest):
    """An artifact holding every required name (real arrays/JSON/tensors where tests read them back)."""
    with ArtifactWriter(path, wait_s=wait_s) as out:
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
    # The artifact is a version directory behind a link; nothing else is left next to it but the lock file.
    assert os.readlink(path) == "art.v1" and sorted(p.name for p in tmp_path.iterdir()) == ["art", "art.lock", "art.v1"]


def test_the_published_artifact_is_readable_as_a_plain_directory_would_be(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write(tmp_path / "art", counts={"items": 3})
    finally:
        os.umask(umask)
    assert path.resolve().stat().st_mode & 0o777 == 0o755, "serving processes of other users read the artifact"


def tree(path):
    """Every file under path with its bytes' sha256, links not followed: equal trees are byte-identical."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink() else "dir"
            for p in sorted(path.rglob("*"))}


def test_an_error_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ArtifactWriter(tmp_path / "art") as out:
            out.json("index_infos.json", {})
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["art.lock"]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "art.lock", "art.v2"]
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
    for staging in ("art.partial-123-abc_9", "art.partial"):  # this twotower's staging name, and earlier ones'
        shutil.copytree(path, tmp_path / staging)  # as if killed between writing the manifest and the rename
        with pytest.raises(ArtifactError, match=f"{staging} is an unfinished export"):
            Artifact.open(tmp_path / staging)
    with pytest.raises(ArtifactError, match=r"manifest.json does not exist: .* is not a complete twotower artifact"):
        Artifact.open(tmp_path)


def test_object_arrays_are_refused_at_write_time(tmp_path):
    with ArtifactWriter(tmp_path / "art") as out:
        with pytest.raises(TypeError, match="item_ids.npy: object arrays would need pickle"):
            out.array(ITEM_IDS, np.array(["a", None], dtype=object))


@pytest.mark.parametrize("files", [
    {MANIFEST: '{"name": "My web app", "start_url": "/"}', "index.html": "<html></html>"},  # someone else's manifest.json
    {"precious.csv": "1,2"},  # no manifest at all
])
def test_a_directory_that_is_not_an_artifact_is_refused_and_left_byte_identical(tmp_path, files):
    target = tmp_path / "site"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    before = tree(tmp_path)
    with pytest.raises(ArtifactError, match=f"{target} is not a twotower artifact: .*; refusing to replace it"):
        write(target)
    assert tree(tmp_path) == before


def test_an_artifact_holding_a_file_its_manifest_does_not_list_is_refused(tmp_path):
    path = write(tmp_path / "art")
    (path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match=r"holds file\(s\) its manifest.json does not list: \['notes.txt'\]"):
        write(path)
    assert (path / "notes.txt").read_text() == "mine"


def test_a_link_to_something_else_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "art").symlink_to("models")
    with pytest.raises(ArtifactError, match=f"{tmp_path / 'art'} is a symbolic link to models, not to a version art.v<N>"):
        write(tmp_path / "art")
    assert os.readlink(tmp_path / "art") == "models"


def test_unrelated_neighbours_survive_an_export(tmp_path):
    """Only what an export can prove it made goes: look-alikes of its staging and version names stay."""
    neighbours = ["art.partial", "art.old-1", "art.v7", f"art.partial-{_dead_pid()}-abc", "art.link-1-ab"]
    for name in neighbours:
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.txt").write_text("precious")
    before = tree(tmp_path)
    write(tmp_path / "art")
    write(tmp_path / "art")
    assert {k: v for k, v in tree(tmp_path).items() if k.split("/")[0] in neighbours} == before
    assert Artifact.open(tmp_path / "art")


def test_leftovers_of_a_dead_export_are_removed(tmp_path):
    dead = _dead_pid()
    write(tmp_path / "art")
    staging = tmp_path / f"art.partial-{dead}-x1"  # a killed export's staging directory
    staging.mkdir()
    (staging / STAGING_MARKER).write_text("")
    (staging / INDEX).write_bytes(b"half")
    shutil.copytree(tmp_path / "art", tmp_path / "art.v5")  # a superseded version whose removal was interrupted...
    (tmp_path / "art.v5" / INDEX).unlink()  # ...after its first file
    (tmp_path / "art.v6").mkdir()  # ...after its last
    (tmp_path / f"art.link-{dead}-1f").symlink_to("art.v5")  # a link never renamed over art
    write(tmp_path / "art")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "art.lock", "art.v7"]


def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_an_older_real_directory_artifact_becomes_a_version_behind_a_link(tmp_path):
    shutil.copytree(write(tmp_path / "made", version="old"), tmp_path / "art")  # an artifact as twotower wrote them before versions
    write(tmp_path / "art", version="new")
    assert os.readlink(tmp_path / "art") == "art.v2" and Artifact.open(tmp_path / "art").manifest["version"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("art")) == ["art", "art.lock", "art.v2"]


def test_a_reader_recovers_an_export_killed_between_moving_an_older_directory_and_linking(tmp_path):
    path = write(tmp_path / "art", version="new")
    os.rename(path, tmp_path / "gone")  # the link is not there yet: art.v1 is all there is
    assert Artifact.open(tmp_path / "art").manifest["version"] == "new"


@contextmanager
def lock_held_elsewhere(path):
    """The lock on path, held by another thread (its own open file, so flock conflicts as across processes) until the block ends."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with exclusive_lock(path, wait_s=1):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        yield release
    finally:
        release.set()
        holder.join()


def test_a_second_writer_waits_for_the_first(tmp_path):
    with lock_held_elsewhere(tmp_path / "art") as release:
        threading.Timer(0.5, release.set).start()
        assert Artifact.open(write(tmp_path / "art", wait_s=30))
        assert release.is_set(), "the writer did not wait for the lock's holder"


def test_a_second_writer_gives_up_naming_the_lock_and_its_holder(tmp_path):
    with lock_held_elsewhere(tmp_path / "art"):
        with pytest.raises(LockTimeout, match=f"{tmp_path / 'art'} is in use by pid {os.getpid()} on host .* \\(lock file {tmp_path / 'art.lock'}\\); gave up after waiting 0.2 s"):
            write(tmp_path / "art", wait_s=0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art.lock"]


@pytest.mark.parametrize("manifest, message", [
    ("[]", "holds a JSON list, not an object"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),  # nesting deeper than the parser's recursion
    ({"files": []}, r"'files' is \[\], expected an object of file name -> \{sha256, bytes\}"),
    ({"files": {INDEX: "0" * 64}}, r"the record of 'index.faiss' is '0000.*', expected \{\"sha256\": <hex>, \"bytes\": <int>\}"),
    ({"files": {INDEX: {"sha256": "0" * 64, "bytes": "10"}}}, r"the record of 'index.faiss' is .*'bytes': '10'"),
])
def test_a_manifest_of_the_wrong_shape_is_refused_naming_it(tmp_path, manifest, message):
    path = write(tmp_path / "art")
    if isinstance(manifest, dict):
        valid = json.loads((path / MANIFEST).read_text())
        manifest = json.dumps({**valid, "files": {**valid["files"], **manifest["files"]} if isinstance(manifest["files"], dict) else manifest["files"]})
    (path / MANIFEST).write_text(manifest)
    with pytest.raises(ArtifactError, match=f"manifest.json:? {message}"):
        Artifact.open(path)


def test_an_array_declaring_terabytes_is_refused_without_allocating_them(tmp_path):
    path = write(tmp_path / "art")
    (path / ITEM_IDS).write_bytes(declare_shape((path / ITEM_IDS).read_bytes(), b"(3,)", b"(1000000000000,)"))  # same size, so verify=False opens it
    with pytest.raises(ArtifactError, match=r"item_ids.npy is not a plain numpy array: mmap length is greater than file size"):
        Artifact.open(path, verify=False).array(ITEM_IDS)


@pytest.mark.parametrize("fault, message", [
    ("declares more", r"member 'indices.npy' declares shape \(1000000000000,\) of int64 \(8000000000128 bytes with its header\), but holds 144 bytes"),
    ("compressed", r"member 'indptr.npy' is compressed \(method 8\); twotower writes arrays uncompressed"),
    ("objects", r"member 'indices.npy' holds Python objects \(dtype object\); reading it would need pickle"),
])
def test_archive_members_are_checked_before_they_are_read(tmp_path, fault, message):
    path = write(tmp_path / "art")
    seen, indptr = path / "user_seen.npz", npy_bytes(np.array([0, 2]))
    if fault == "declares more":
        write_archive(seen, {"indptr.npy": indptr, "indices.npy": declare_shape(npy_bytes(np.array([4, 5])), b"(2,)", b"(1000000000000,)")})
    elif fault == "compressed":
        np.savez_compressed(seen, indptr=np.array([0, 2]), indices=np.array([4, 5]))
    else:
        write_archive(seen, {"indptr.npy": indptr, "indices.npy": npy_bytes(np.array([4, None], dtype=object))})
    resign(path)
    with pytest.raises(ArtifactError, match=f"user_seen.npz is not an archive of plain numpy arrays: {message}"):
        Artifact.open(path).arrays("user_seen.npz")
