"""What an attacker (or a careless tool) does to an artifact directory: change files, then re-sign the manifest.

The attacker controls every byte, manifest included, so ``resign`` makes every recorded size and
sha256 match again: what must stop each change is the reader's checks, not the checksums.
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file

from tests.export_fixtures import trained_and_exported
from twotower.artifact import CANDIDATE_TOWER, MANIFEST, QUERY_TOWER, TOWER_CONFIG, TOWER_VOCAB, TOWER_WEIGHTS, sha256_of
from twotower.artifact_checks import tower_digest


def private_copy(tmp_path_factory, tmp_path: Path) -> Path:
    """A copy of the session's exported artifact (links followed), free to tamper with."""
    source = trained_and_exported(tmp_path_factory.getbasetemp() / "export-shared")[1]
    copy = tmp_path / "artifact"
    shutil.copytree(source, copy)
    return copy


def resign(artifact: Path) -> None:
    """Make every checksum and size in the manifest match the files again."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    for name in manifest["files"]:
        path = artifact / name
        manifest["files"][name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def redigest(artifact: Path) -> None:
    """What an attacker who knows twotower does after changing a tower: record its new digest (then ``resign``)."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    for tower in (QUERY_TOWER, CANDIDATE_TOWER):
        config, vocab = (json.loads((artifact / tower / name).read_text()) for name in (TOWER_CONFIG, TOWER_VOCAB))
        manifest["towers"][tower] = tower_digest(config, vocab, load_file(artifact / tower / TOWER_WEIGHTS))
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    """Rewrite a JSON file after ``change(data)`` edited it in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_npz(path: Path, **arrays: np.ndarray) -> None:
    """Replace (or add) arrays of an ``.npz`` archive, keeping the others."""
    with np.load(path, allow_pickle=False) as data:
        kept = {k: data[k] for k in data.files}
    buffer = io.BytesIO()
    np.savez(buffer, **{**kept, **arrays})
    path.write_bytes(buffer.getvalue())


def declare_shape(data: bytes, old: bytes, new: bytes) -> bytes:
    """.npy bytes (alone or inside an archive) whose header declares ``new`` where it declared ``old``.

    The header's padding absorbs the change, so the file keeps its size and every offset in it.
    """
    at = data.index(old)
    end = data.index(b"\n", at)  # a .npy header ends in a newline, after its padding spaces
    header = data[at:end].replace(old, new, 1)
    header = header[: end - at] if len(header) > end - at else header + b" " * (end - at - len(header))
    return data[:at] + header + data[end:]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    """An ``.npz`` of the given member bytes, stored as ``np.savez`` stores them (so each member's CRC is right)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
