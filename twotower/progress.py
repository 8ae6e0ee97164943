"""Progress bars for long loops (encoding a catalogue, building an index), shown only where they can be read."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool | None = None) -> Iterator[T]:
    """``iterable`` with a progress bar (e.g. encoding the catalogue, building an index).

    Args:
        enabled: None (default) shows the bar only when stderr is a terminal or a notebook,
            so batch-job logs are not filled with carriage returns; True/False force it.
    """
    if enabled is None:
        enabled = sys.stderr.isatty() or _in_notebook()
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, dynamic_ncols=True))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
