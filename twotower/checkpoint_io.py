"""Checkpoint writes that a crash cannot tear: a checkpoint file is either complete or absent.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, which for local paths
writes a temporary file in ``$TMPDIR`` and ``shutil.move``s it into place. Where ``$TMPDIR`` is
on another filesystem than the checkpoint directory (common on clusters: node-local /tmp,
checkpoints on shared storage), that move is a copy into the final path, so a SIGKILL during
it leaves a truncated ``last.ckpt``; the data is never fsync'ed, so a power loss can leave an
empty one; and a killed write leaves its temporary file behind in ``$TMPDIR``.

``AtomicCheckpointIO`` writes local checkpoints next to their final path, fsyncs them, and
``os.replace``s them into place (atomic on POSIX within one filesystem), then fsyncs the
directory. Remote paths (``s3://`` etc.) keep Lightning's behaviour: object stores publish an
object only when its upload completes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO

PARTIAL_SUFFIX = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: ``<path>.partial`` -> fsync -> ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local path {path}")
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` such that ``path`` never holds a partial file, even after SIGKILL or power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid keeps two writers of one path (e.g. two ranks by mistake) from sharing a partial file.
    partial = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(partial, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)
