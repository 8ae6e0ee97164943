"""The artifact directory: file names, publishing without a moment of absence, and verified reading without unpickling.

Writing (``ArtifactWriter``): an export holds ``<dir>.lock`` (``twotower.file_lock``), writes into its
own staging directory ``<dir>.partial-<pid>-<random>``, writes ``manifest.json`` (the sha256 and size
of every other file) last, renames the staging directory to a version ``<dir>.v<N>``, and then
points ``<dir>``, a symbolic link, at that version. Why a link: Linux cannot rename a directory over
a non-empty one, so replacing a real directory takes two renames with a moment between them when
``<dir>`` does not exist (and a kill there leaves no artifact); replacing a link with a new link is
one atomic ``os.replace``, so ``<dir>`` names a complete artifact at every instant, for readers in
other processes and after a kill at any step. Readers follow the link (``Artifact.open``,
``faiss.read_index(f"{dir}/index.faiss")``); copies must follow it too (``cp -rL``, ``tar -h``, ``rsync dir/``).

An export replaces or removes only what it can prove is its own: an artifact directory whose
manifest carries ``FORMAT`` and lists every file in it, an empty directory, a staging directory
holding ``STAGING_MARKER``, a link named like ours. Anything else is refused by name (``<dir>``
itself) or left in place with a warning (a sibling that only looks like ours).

Reading (``Artifact.open``) checks the manifest's shape, the format version, each file's size and
sha256, and that every name stays inside the directory; arrays are read with ``allow_pickle=False``,
weights with safetensors. The readers bound what a file can make them allocate by the file's own size
(a crafted header may declare terabytes), and turn whatever goes wrong reading a file into an
``ArtifactError`` naming it. What the files mean together (shapes, ranges, the index against the
vectors) is checked by ``twotower.artifact_checks`` when a ``Retriever`` loads them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from twotower.file_lock import exclusive_lock
from twotower.model.saving import TOWER_CONFIG, TOWER_VOCAB, TOWER_WEIGHTS

log = logging.getLogger(__name__)

FORMAT = "twotower-artifact"
# 2: the manifest records each tower's digest ("towers"), which load checks;
# 3: item features and user histories (catalogue rows) are stored, so any query tower serves
# 4: numeric features are stored raw; the towers standardise and clip them (so exported programs do)
FORMAT_VERSION = 4
STAGING_INFIX = ".partial-"  # <dir>.partial-<pid>-<random>: one export's private staging directory
STAGING_MARKER = ".twotower-staging"  # inside a staging directory: the proof that an export made it
VERSION_INFIX = ".v"  # <dir>.v<N>: a complete artifact; <dir> is a link to the newest
LINK_INFIX = ".link-"  # <dir>.link-<pid>-<random>: the new link, before it is renamed over <dir>
LOCK_WAIT_S = 600.0  # how long a second export into the same directory waits for the first to publish
UNFINISHED = re.compile(r".*\.partial(-\d+-\w+)?")  # staging names: ours, and <dir>.partial of earlier twotowers

MANIFEST = "manifest.json"
INDEX = "index.faiss"
INDEX_INFOS = "index_infos.json"
INDEX_PLOT = "index_recall_latency.png"  # recall@10 and @100 vs single-query latency over the sweep, exact search beside
ITEM_IDS = "item_ids.npy"  # (n_items,) unicode, row r of the index is item ITEM_IDS[r]
#: Ids (items and users, in the artifact and in ``Retriever.add_items``) have at most this many characters:
#: the id arrays on disk are fixed-width, so one long id would widen every entry to its length.
MAX_ID_CHARS = 256
ITEM_VECTORS = "item_vectors.npy"  # (n_items, dim) float32, exact vectors for re-scoring and similar items
ITEMS = "items.parquet"  # the items table as given (titles, genres... for display)
USER_IDS = "user_ids.npy"  # (n_users,) unicode
USER_FEATURES = "user_features.npz"  # query-tower inputs of every known user, one array per feature
USER_SEEN = "user_seen.npz"  # CSR (indptr, indices) of each user's interacted item rows
ITEM_EVENTS = "item_events.npz"  # the interaction log as (item row, timestamp), for popular/trending
ITEM_FEATURES = "item_features.npz"  # candidate-tower inputs of every catalogue row, one array per feature
USER_HISTORIES = "user_histories.npz"  # per history feature, (n_users, L) catalogue rows + 1 of each user's latest items
QUERY_TOWER = "query_tower"
CANDIDATE_TOWER = "candidate_tower"
QUERY_TORCHSCRIPT = f"{QUERY_TOWER}/torchscript.pt"  # the query tower for serving without twotower (deprecated by torch)
QUERY_ONNX = f"{QUERY_TOWER}/model.onnx"  # the query tower for ONNX Runtime / Triton (inputs: the manifest's serving_signature)
QUERY_PROGRAM = f"{QUERY_TOWER}/model.pt2"  # the query tower as a torch.export program (torch.export.load)

#: Files every artifact has (``ITEMS`` and the portable query towers are optional).
REQUIRED = (
    INDEX, INDEX_INFOS, ITEM_IDS, ITEM_VECTORS, ITEM_FEATURES, USER_IDS, USER_FEATURES, USER_HISTORIES, USER_SEEN, ITEM_EVENTS,
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
    """Writes an artifact into a private staging directory and publishes it at ``path`` on ``commit``.

    Use as a context manager. From entering to leaving it holds ``<path>.lock``: a second writer of
    the same path waits up to ``wait_s`` seconds, then raises ``LockTimeout`` naming the holder.
    Leaving without a commit (an exception) removes the staging directory.

    Raises:
        ArtifactError: at construction and again at commit, when ``path`` is something an export
            may not replace (see ``refuse_unless_replaceable``).
    """

    def __init__(self, path: str | Path, wait_s: float = LOCK_WAIT_S):
        # Absolute but not resolved: ``path`` may be our link, which is replaced, not followed.
        self.path = Path(os.path.abspath(path))
        self.wait_s = wait_s
        refuse_unless_replaceable(self.path)  # before an export's work; checked again under the lock in commit
        self._held = ExitStack()

    def __enter__(self) -> ArtifactWriter:
        self._held.enter_context(exclusive_lock(self.path, self.wait_s))
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f"{self.path.name}{STAGING_INFIX}{os.getpid()}-", dir=self.path.parent))
            # mkdtemp makes it private (0700); the published artifact is read by serving processes of
            # other users, as a plain mkdir's directory would be.
            umask = os.umask(0)
            os.umask(umask)
            self.staging.chmod(0o777 & ~umask)
            (self.staging / STAGING_MARKER).write_text(f"staging directory of the twotower export with pid {os.getpid()}\n")
        except BaseException:
            self._held.close()
            raise
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if self.staging.exists():  # not committed
                shutil.rmtree(self.staging)
        finally:
            self._held.close()

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
        """Checksum every file, write the manifest last, publish the artifact at ``path``, remove leftovers."""
        files = {}
        for path in sorted(p for p in self.staging.rglob("*") if p.is_file() and p.name != STAGING_MARKER):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[path.relative_to(self.staging).as_posix()] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
        missing = [name for name in REQUIRED if name not in files]
        if missing:
            raise ArtifactError(f"{self.staging}: artifact lacks required file(s) {missing}")
        self.json(MANIFEST, {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files})
        with open(self.staging / MANIFEST, "rb") as f:
            os.fsync(f.fileno())
        (self.staging / STAGING_MARKER).unlink()  # the manifest proves the directory ours from here on
        refuse_unless_replaceable(self.path)  # again, under the lock: the directory may have changed since the export began
        number = max(versions(self.path), default=0) + 1
        legacy = self.path.is_dir() and not self.path.is_symlink()
        version = self._sibling(f"{VERSION_INFIX}{number + 1 if legacy else number}")
        os.rename(self.staging, version)
        if legacy:
            # A real directory (an artifact of a twotower before versions, or an empty folder) cannot
            # become a link in one rename: it becomes the version before ours first. Until the link
            # exists, Artifact.open reads the newest version instead.
            if any(self.path.iterdir()):
                os.rename(self.path, self._sibling(f"{VERSION_INFIX}{number}"))
            else:
                os.rmdir(self.path)
        link = self._sibling(f"{LINK_INFIX}{os.getpid()}-{secrets.token_hex(4)}")
        os.symlink(version.name, link)  # relative, so the folder holding the artifact may move as a whole
        os.replace(link, self.path)  # the one step readers can see: before it the old version, after it the new
        _fsync_directory(self.path.parent)
        _remove_leftovers(self.path)
        return self.path

    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)


def versions(path: Path) -> dict[int, Path]:
    """The version directories ``<path>.v<N>`` next to ``path``, by N."""
    pattern = re.compile(re.escape(path.name) + re.escape(VERSION_INFIX) + r"(\d+)")
    if not path.parent.is_dir():
        return {}
    return {int(match[1]): entry for entry in path.parent.iterdir()
            if (match := pattern.fullmatch(entry.name)) and entry.is_dir() and not entry.is_symlink()}


def refuse_unless_replaceable(path: Path) -> None:
    """Raises ``ArtifactError`` naming ``path`` and the reason, unless an export may replace it.

    Replaceable: nothing; an empty directory; a link to a version ``<path>.v<N>`` that is ours (see
    ``not_ours``); a real directory that is ours (an artifact of a twotower before versions).
    """
    if path.is_symlink():
        target = os.readlink(path)
        if not re.fullmatch(re.escape(path.name) + re.escape(VERSION_INFIX) + r"\d+", target):
            raise ArtifactError(f"{path} is a symbolic link to {target}, not to a version {path.name}{VERSION_INFIX}<N> that an export "
                                "made next to it; refusing to replace it (nothing was changed)")
        reason = not_ours(path.parent / target) if (path.parent / target).is_dir() else None
    elif not path.exists():
        return
    elif not path.is_dir():
        raise ArtifactError(f"{path} is a file, not a twotower artifact directory; refusing to replace it (nothing was changed)")
    else:
        reason = not_ours(path)
    if reason:
        raise ArtifactError(f"{path} is not a twotower artifact: {reason}; refusing to replace it (nothing was changed)")


def not_ours(directory: Path) -> str | None:
    """Why an export may not replace or remove ``directory``, or None when it may.

    It may when nothing would be lost: the directory is empty, or it is a twotower artifact (a
    ``manifest.json`` carrying ``FORMAT``) holding no file its manifest does not list. Listed files
    may be missing: that is a removal interrupted mid-way, which the next export finishes.
    """
    present = _files_under(directory)
    if not present:
        return None
    if MANIFEST not in present:
        return f"it has no {MANIFEST} (it holds {present[:5]})"
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its {MANIFEST} is not JSON ({err})"
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        return f"its {MANIFEST} has format {found!r}, a twotower artifact's has {FORMAT!r}"
    listed = manifest.get("files")
    foreign = [name for name in present if name != MANIFEST and name not in (listed if isinstance(listed, dict) else {})]
    if foreign:
        return f"it holds file(s) its {MANIFEST} does not list: {foreign[:5]}"
    return None


def _files_under(directory: Path) -> list[str]:
    """Every file and link under ``directory`` (links not followed), as relative posix names."""
    names = []
    for root, dirs, files in os.walk(directory):
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]:
            names.append(Path(root, name).relative_to(directory).as_posix())
    return sorted(names)


def _remove_leftovers(path: Path) -> None:
    """Removes what interrupted exports into ``path`` left next to it, where it is provably ours.

    Runs under the lock, after publishing: every staging directory then belongs to an export that
    died (or one whose filesystem ignores flock: hence the check that its pid is gone), every other
    version is superseded, and every link named like ours was never renamed over ``path``.
    """
    name = re.escape(path.name)
    staging = re.compile(name + re.escape(STAGING_INFIX) + r"(\d+)-\w+")
    version = re.compile(name + re.escape(VERSION_INFIX) + r"\d+")
    link = re.compile(name + re.escape(LINK_INFIX) + r"\d+-\w+")
    current = os.readlink(path)
    for entry in path.parent.iterdir():
        if link.fullmatch(entry.name) and entry.is_symlink():
            entry.unlink()  # removing a link loses nothing
            continue
        if not entry.is_dir() or entry.is_symlink():
            continue
        if (match := staging.fullmatch(entry.name)) and not _alive(int(match[1])):
            reason = None if (entry / STAGING_MARKER).is_file() else not_ours(entry)
        elif version.fullmatch(entry.name) and entry.name != current:
            reason = not_ours(entry)
        else:
            continue
        try:
            if reason:
                raise ArtifactError(reason)
            _remove(entry)
        except (OSError, ArtifactError) as err:
            log.warning("left %s in place (an earlier export's leftover, or something that looks like one): %s", entry, err)


def _remove(directory: Path) -> None:
    """``shutil.rmtree`` that removes the proofs of ownership (manifest, staging marker) last.

    A removal killed mid-way thus leaves a directory that is still provably ours, and the next export finishes it.
    """
    proofs = (MANIFEST, STAGING_MARKER)
    for entry in directory.iterdir():
        if entry.name in proofs:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for proof in proofs:
        (directory / proof).unlink(missing_ok=True)
    directory.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def _fsync_directory(path: Path) -> None:
    """Makes the renames in ``path`` survive a power loss (a rename is an update of its directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Artifact:
    """A verified artifact directory: manifest checked, every file's size and sha256 matched."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Artifact:
        path = Path(path)
        if UNFINISHED.fullmatch(path.name):
            raise ArtifactError(f"{path} is an unfinished export (a staging directory); export again")
        if not path.exists() and not path.is_symlink() and versions(path):
            # Only an export killed while turning an older real directory into a link leaves this.
            newest = versions(path)[max(versions(path))]
            log.warning("%s does not exist but %s does (an export into %s was interrupted): reading %s; the next export restores %s",
                        path, newest.name, path, newest, path)
            path = newest
        elif path.is_symlink():
            path = path.resolve()  # once: an export flipping the link meanwhile cannot make this reader mix two versions
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{manifest_path} does not exist: {path} is not a complete twotower artifact")
        manifest = _parse_json(manifest_path)
        if not isinstance(manifest, dict):
            raise ArtifactError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not an object")
        if manifest.get("format") != FORMAT:
            raise ArtifactError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{manifest_path}: format_version is {manifest.get('format_version')!r}, this twotower reads {FORMAT_VERSION}")
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise ArtifactError(f"{manifest_path}: 'files' is {_short(files)}, expected an object of file name -> {{sha256, bytes}}")
        missing = [name for name in REQUIRED if name not in files]
        if missing:
            raise ArtifactError(f"{manifest_path} lists no {missing}")
        for name, record in files.items():
            file = safe_name(name, path)
            if not (isinstance(record, dict) and isinstance(record.get("sha256"), str) and type(record.get("bytes")) is int):
                raise ArtifactError(f"{manifest_path}: the record of {name!r} is {_short(record)}, expected {{\"sha256\": <hex>, \"bytes\": <int>}}")
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
        return _parse_json(self.file(name))

    def array(self, name: str, mmap: bool = False) -> np.ndarray:
        """The array in ``name``; memory-mapped with ``mmap``, else read into memory.

        Always opened as a memory map first: numpy then checks the shape the header declares
        against the file's size, where reading it straight in would first allocate that shape.
        """
        file = self.file(name)
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            return array if mmap else np.array(array)
        except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes is the file's fault; object arrays (pickle) land here too
            raise ArtifactError(f"{file} is not a plain numpy array: {err}") from None

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of an ``.npz`` archive, each member's declared shape checked against its size before it is read."""
        file = self.file(name)
        try:
            with zipfile.ZipFile(file) as archive:
                for member in archive.infolist():
                    _check_member(archive, member)
            with np.load(file, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception as err:  # noqa: BLE001 - as in ``array``; our own refusals of a member land here too
            raise ArtifactError(f"{file} is not an archive of plain numpy arrays: {err}") from None

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.file(name)))
        except (SafetensorError, OSError, ValueError) as err:
            raise ArtifactError(f"{self.file(name)} is not a safetensors file: {err}") from None


def _parse_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # ValueError: JSONDecodeError and UnicodeDecodeError; RecursionError: "[[[[..." deep nesting
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None


def _check_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    """Raises ``ArtifactError`` unless ``member`` is a stored ``.npy`` whose header's shape x itemsize fills it exactly.

    ``np.load`` reads an archive member by allocating the declared shape first; stored (not
    deflated) members cannot declare more bytes than the archive file holds.
    """
    if not member.filename.endswith(".npy"):
        raise ArtifactError(f"member {member.filename!r} is not a .npy array")
    if member.compress_type != zipfile.ZIP_STORED:
        raise ArtifactError(f"member {member.filename!r} is compressed (method {member.compress_type}); twotower writes arrays uncompressed")
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ArtifactError(f"member {member.filename!r} has .npy format version {version}, twotower writes 1.0 or 2.0")
        shape, _, dtype = read_header(stream)
        declared = stream.tell() + math.prod(shape) * dtype.itemsize
    if dtype.hasobject:
        raise ArtifactError(f"member {member.filename!r} holds Python objects (dtype {dtype}); reading it would need pickle")
    if declared != member.file_size:
        raise ArtifactError(f"member {member.filename!r} declares shape {shape} of {dtype} ({declared} bytes with its header), but holds {member.file_size} bytes")


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths in configs and metrics."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to JSON")
