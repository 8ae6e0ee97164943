"""When each item was first seen in an interaction log, and how old it is at a given time.

An item's age at time ``t`` is ``t`` minus its earliest interaction *in the log given*: evaluation
passes the interactions known at a split (``Prepared.first_seen``; the whole loaded log would leak
the test period's first views into the validation ages), serving the exported log (``Retriever``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FirstSeen:
    """Attributes:
        times: (n_items,) float64 time of each item's earliest interaction in the log; NaN = never seen.
        end: the log's latest time (the end of the data known), or None for an empty log.
    """

    times: np.ndarray
    end: float | None

    def ages(self, now: float | None = None) -> np.ndarray:
        """(n_items,) float64 time from each item's first interaction to ``now`` (default: ``end``).

        An item never seen in the log is as new as can be: age 0, as is one first seen after ``now``
        (a replayed past ``now``): neither has been on offer for any time yet.
        """
        now = self.end if now is None else now
        if now is None:  # an empty log: nothing has been seen, every item is new
            return np.zeros(len(self.times))
        age = now - self.times
        return np.where(np.isnan(age), 0.0, np.maximum(age, 0.0))


def first_seen(items: np.ndarray, times: np.ndarray, n_items: int) -> FirstSeen:
    """The first-seen times of catalogue rows ``0..n_items-1`` from a log of (item row, time) events."""
    items, times = np.asarray(items, dtype=np.int64), np.asarray(times, dtype=np.float64)
    if items.shape != times.shape:
        raise ValueError(f"first_seen: items has shape {items.shape}, times {times.shape}")
    earliest = np.full(n_items, np.inf)
    np.minimum.at(earliest, items, times)
    earliest[np.isinf(earliest)] = np.nan
    return FirstSeen(earliest, float(times.max()) if len(times) else None)
