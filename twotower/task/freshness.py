"""Freshness of recommended lists: how old the recommended items are at the evaluation time.

``age@k``: the mean age, in days, of the top-k items; ``fresh@k``: the share of the top-k younger than
``fresh_days``. An item's age is the evaluation time (the latest interaction known at the split) minus
its first interaction among those known; an item never seen in them is age 0 (new). The ages come in
as one (n_items,) tensor (``twotower.data.first_seen.FirstSeen.ages``), so this file is only the math.
"""
from __future__ import annotations

import torch

DAY = 86400.0  # seconds; interaction times are Unix seconds (``twotower.data.tables.timestamp_seconds``)
# "Fresh" = first seen within the last week: the window of the trending baseline and the half-life of
# ``Retriever.trending``, so one notion of "new" runs through baselines, metrics and serving. A week
# is coarse for news (stale in a day or two) and fine for films; ``beyond_accuracy_for_split`` takes another.
FRESH_DAYS = 7.0


def item_age_days(ages_seconds) -> torch.Tensor:
    """(n_items,) ages in seconds (a numpy array or tensor) -> float32 days."""
    return (torch.as_tensor(ages_seconds, dtype=torch.float64) / DAY).float()


def list_age(ages: torch.Tensor) -> torch.Tensor:
    """Mean age of each list: (U, k) ages of the recommended items -> (U,)."""
    return ages.double().mean(1)


def fresh_share(ages: torch.Tensor, fresh_days: float = FRESH_DAYS) -> torch.Tensor:
    """Share of each list younger than ``fresh_days``: (U, k) ages in days -> (U,)."""
    return (ages < fresh_days).double().mean(1)
