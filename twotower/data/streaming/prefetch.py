"""Items of an iterator produced in a background thread, a bounded number ahead of the consumer.

Reading and decoding parquet (pyarrow) and most numpy passes release the GIL, so a reader thread
overlaps with the thread that shuffles and hands out batches.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(produce: Callable[[], Iterator[T]], depth: int = 2) -> Iterator[T]:
    """The items of ``produce()``, made in a daemon thread at most ``depth`` ahead; its error is raised here.

    Closing this generator early (``contextlib.closing``, or the end of a ``for`` that breaks) stops
    the thread after the item it is making.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
            put(_Failed(error))

    thread = threading.Thread(target=run, name="twotower-shard-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
