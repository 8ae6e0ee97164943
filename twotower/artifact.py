"""The artifact directory: file names, atomic writing, and verified reading without unpickling.

An artifact is written into ``<dir>.partial``; ``manifest.json`` (with the sha256 and size of
every other file) is written last, and only then is the directory renamed to ``<dir>``. A killed
export therefore leaves at most a ``.partial`` directory, which ``Artifact.open`` refuses.
Reading checks the format version, each file's size and sha256, and that every name stays
inside the directory; arrays are read with ``allow_pickle=False``, weights with safetensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "twotower-artifact"
FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial"

MANIFEST = "manifest.json"
INDEX = "index.faiss"
INDEX_INFOS = "index_infos.json"
INDEX_PLOT = "index_recall_latency.png"  # recall@10 vs single-query latency of the exported index setting
ITEM_IDS = "item_ids.npy"  # (n_items,) unicode, row r of the index is item ITEM_IDS[r]
ITEM_VECTORS = "item_vectors.npy"  # (n_items, dim) float32, exact vectors for re-scoring and similar items
ITEMS = "items.parquet"  # the items table as given (titles, genres... for display)
USER_IDS = "user_ids.npy"  # (n_users,) unicode
USER_FEATURES = "user_features.npz"  # query-tower inputs of every known user, one array per feature
USER_SEEN = "user_seen.npz"  # CSR (indptr, indices) of each user's interacted item rows
ITEM_EVENTS = "item_events.npz"  # the interaction log as (item row, timestamp), for popular/trending
QUERY_TOWER = "query_tower"
CANDIDATE_TOWER = "candidate_tower"
TOWER_CONFIG = "config.json"
TOWER_WEIGHTS = "model.safetensors"
TOWER_VOCAB = "vocab.json"
QUERY_TORCHSCRIPT = f"{QUERY_TOWER}/torchscript.pt"  # the query tower for serving without twotower

#: Files every artifact has (``ITEMS`` and ``QUERY_TORCHSCRIPT`` are optional).
REQUIRED = (
    INDEX, INDEX_INFOS, ITEM_IDS, ITEM_VECTORS, USER_IDS, USER_FEATURES, USER_SEEN, ITEM_EVENTS,
    *(f"{tower}/{name}" for tower in (QUERY_TOWER, CANDIDATE_TOWER) for name in (TOWER_CONFIG, TOWER_WEIGHTS, TOWER_VOCAB)),
)


class ArtifactError(ValueError):
    """An artifact directory that is incomplete, altered, or of another format."""


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def safe_name(name: str, root: Path) -> Path:
    """``root / name`` for a relative name that stays inside ``root``; anything else is refused."""
    pure = PurePosixPath(name)
    if not name or "\\" in name or pure.is_absolute() or ".." in pure.parts or name != pure.as_posix():
        raise ArtifactError(f"{root / MANIFEST}: file name {name!r} is not a plain relative path inside the artifact")
    path = (root / pure).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ArtifactError(f"{root / MANIFEST}: file name {name!r} resolves to {path}, outside {root}")
    return path


class ArtifactWriter:
    """Writes an artifact into ``<path>.partial`` and renames it to ``path`` on ``commit``.

    Use as a context manager: leaving it with an exception removes the partial directory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.staging = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        if self.path.exists() and not (self.path / MANIFEST).exists() and any(self.path.iterdir()):
            raise ArtifactError(f"output directory {self.path} exists and is not a twotower artifact (no {MANIFEST}); refusing to replace it")

    def __enter__(self) -> "ArtifactWriter":
        shutil.rmtree(self.staging, ignore_errors=True)  # a killed earlier export
        self.staging.mkdir(parents=True)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def file(self, name: str) -> Path:
        """Where to write ``name`` (parent directories created)."""
        path = safe_name(name, self.staging)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def json(self, name: str, data: Any) -> None:
        self.file(name).write_text(json.dumps(data, indent=2, sort_keys=True, default=_plain))

    def array(self, name: str, array: np.ndarray) -> None:
        if array.dtype == object:
            raise TypeError(f"{name}: object arrays would need pickle; convert to a fixed-width dtype")
        np.save(self.file(name), array, allow_pickle=False)

    def arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        bad = [k for k, a in arrays.items() if a.dtype == object]
        if bad:
            raise TypeError(f"{name}: object arrays {bad} would need pickle")
        np.savez(self.file(name), **arrays)

    def tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(self.file(name)))

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Checksum every file, write the manifest last, and make the artifact visible in one rename."""
        files = {}
        for path in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[path.relative_to(self.staging).as_posix()] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
        missing = [name for name in REQUIRED if name not in files]
        if missing:
            raise ArtifactError(f"{self.staging}: artifact lacks required file(s) {missing}")
        self.json(MANIFEST, {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files})
        with open(self.staging / MANIFEST, "rb") as f:
            os.fsync(f.fileno())
        if self.path.exists():
            # Swap so the target is never a half-written directory: old -> aside, new -> target.
            aside = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            self.path.rename(aside)
            self.staging.rename(self.path)
            shutil.rmtree(aside)
        else:
            self.staging.rename(self.path)
        return self.path


class Artifact:
    """A verified artifact directory: manifest checked, every file's size and sha256 matched."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Artifact":
        path = Path(path)
        if path.name.endswith(PARTIAL_SUFFIX):
            raise ArtifactError(f"{path} is an unfinished export (its name ends in {PARTIAL_SUFFIX}); export again")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{manifest_path} does not exist: {path} is not a complete twotower artifact")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{manifest_path} is not valid JSON: {err}") from None
        if manifest.get("format") != FORMAT:
            raise ArtifactError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{manifest_path}: format_version is {manifest.get('format_version')!r}, this twotower reads {FORMAT_VERSION}")
        files = manifest.get("files") or {}
        missing = [name for name in REQUIRED if name not in files]
        if missing:
            raise ArtifactError(f"{manifest_path} lists no {missing}")
        for name, record in files.items():
            file = safe_name(name, path)
            if not file.is_file():
                raise ArtifactError(f"{file} is listed in {MANIFEST} but does not exist")
            size = file.stat().st_size
            if size != record["bytes"]:
                raise ArtifactError(f"{file} has {size} bytes, {MANIFEST} records {record['bytes']} (truncated or replaced)")
            if verify:
                digest = sha256_of(file)
                if digest != record["sha256"]:
                    raise ArtifactError(f"{file} has sha256 {digest}, {MANIFEST} records {record['sha256']} (the file was changed)")
        return cls(path, manifest)

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise ArtifactError(f"{self.path / MANIFEST} lists no file {name!r}")
        return safe_name(name, self.path)

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.file(name).read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{self.file(name)} is not valid JSON: {err}") from None

    def array(self, name: str, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(self.file(name), mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # object arrays (pickle) are refused here, never loaded
            raise ArtifactError(f"{self.file(name)} is not a plain numpy array: {err}") from None

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self.file(name), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ArtifactError(f"{self.file(name)} is not an archive of plain numpy arrays: {err}") from None

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.file(name)))
        except SafetensorError as err:
            raise ArtifactError(f"{self.file(name)} is not a safetensors file: {err}") from None


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths in configs and metrics."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to JSON")
