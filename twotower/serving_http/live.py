"""The Retriever a server answers with, replaced whole when a new artifact is loaded.

A request reads ``LiveRetriever.current`` once and answers from that ``Served`` to the end, so a
reload never changes the artifact under a request: the new one is loaded beside the old (which keeps
answering), then published by one attribute assignment, which Python makes atomic. The old Retriever
lives on until the last request holding it finishes. A load that fails publishes nothing.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from twotower.artifact import MANIFEST, ArtifactError
from twotower.retriever import Retriever

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded artifact: ``path`` as asked for (an export's link, say) and the Retriever read from it."""

    path: Path
    retriever: Retriever
    loaded_at: float  # time.time() when it was published


class LiveRetriever:
    """Holds the ``Served`` artifact; ``reload`` swaps in another, ``watch`` does so when the files at ``path`` change.

    Raises (at construction and on ``reload``):
        ArtifactError: naming the file that is missing or wrong (``Retriever.load``'s checks).
    """

    def __init__(self, path: str | Path):
        self._reloading = threading.Lock()  # one load at a time: two at once would race to publish
        self._seen = fingerprint(Path(path))
        self.current = Served(Path(path), Retriever.load(path), time.time())

    def reload(self, path: str | Path | None = None) -> Served:
        """Loads ``path`` (default: the served path again, as a new export published there) and publishes it."""
        with self._reloading:
            path = Path(path) if path is not None else self.current.path
            seen = fingerprint(path)  # before loading: files changing meanwhile differ from it, and the watcher loads again
            served = Served(path, Retriever.load(path), time.time())
            self.current, self._seen = served, seen
            log.info("serving %s (%s)", path, served.retriever.artifact.path)
            return served

    def watch(self, every_s: float, stop: threading.Event) -> None:
        """Until ``stop`` is set, reloads whenever the served path names other files (a new version, a rewritten manifest).

        A load that fails is logged and not retried until the files change again; the old artifact keeps serving.
        """
        while not stop.wait(every_s):
            now = fingerprint(self.current.path)
            if now is None or now == self._seen:
                continue
            try:
                self.reload()
            except ArtifactError as err:
                log.error("not serving the changed artifact at %s, still serving the one loaded before: %s", self.current.path, err)
                self._seen = now
            except Exception:  # whatever else a load raises, the old artifact serves on and the watcher keeps watching
                log.exception("not serving the changed artifact at %s, still serving the one loaded before", self.current.path)
                self._seen = now


def fingerprint(path: Path) -> tuple[str, int, int, int] | None:
    """What changes when an export publishes at ``path``: the version its link names and its manifest's inode, size and mtime; None if there is no manifest."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(Path(real) / MANIFEST)
    except OSError:
        return None
    return real, stat.st_ino, stat.st_size, stat.st_mtime_ns
