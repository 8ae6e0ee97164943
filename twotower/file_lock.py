"""One process at a time per path: an exclusive ``fcntl.flock`` on ``<path>.lock``, naming its holder."""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
POLL_S = 0.1


class LockTimeout(TimeoutError):
    """Another process held the lock on a path for longer than the caller would wait."""


@contextmanager
def exclusive_lock(path: Path, wait_s: float) -> Iterator[Path]:
    """Holds ``<path>.lock`` for the ``with`` block, waiting up to ``wait_s`` seconds for another holder.

    The holder writes its host and pid into the file, so that a waiter can say who holds it. The
    kernel releases a flock when its holder dies, even by SIGKILL, so a killed holder never leaves a
    stale lock. The file itself is never deleted: a process that unlinked it could let a second
    process lock a new file while a third still held the old one.

    Raises:
        LockTimeout: naming the lock file and its holder, when ``wait_s`` passed first.
    """
    lock = path.with_name(path.name + LOCK_SUFFIX)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(lock)
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} is in use by {holder} (lock file {lock}); gave up after waiting {wait_s:g} s") from None
                if not said:
                    log.warning("%s is in use by %s (lock file %s); waiting up to %g s", path, holder, lock, wait_s)
                    said = True
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the flock


def _holder(lock: Path) -> str:
    """'pid N on host H' as the holder wrote it (empty while a new holder has not written yet)."""
    try:
        host, pid = lock.read_text().split()
    except (OSError, ValueError):
        return "another process"
    return f"pid {pid} on host {host}"
