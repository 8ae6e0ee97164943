"""What an exported artifact serves from: the prepared catalogue and users, and the whole interaction log."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from twotower.data.store import CSR, Features
from twotower.features.history import history_inputs

if TYPE_CHECKING:
    from twotower.data.prepared import Prepared


@dataclass
class ServingLog:
    """Every logged interaction (all splits), as a source reads it for export.

    Attributes:
        histories: history feature -> (n_users, L) catalogue rows + 1 of each user's latest items,
            most recent first, 0 = empty slot.
        seen: user row -> the item rows the user interacted with (excluded from recommendations).
        event_items, event_times: (n,) item row and timestamp of every interaction (popular, trending).
        timed: whether the interactions have timestamps; without, ``event_times`` are zeros and nothing has an age.
    """

    histories: dict[str, torch.Tensor]
    seen: CSR
    event_items: np.ndarray
    event_times: np.ndarray
    timed: bool = True


@dataclass
class ServingData:
    """The arrays export writes, and ``Retriever.load`` reads back.

    Attributes:
        item_ids: (n_items,) str, catalogue row r is item ``item_ids[r]`` (the index's row order).
        items: the items table as given, for display.
        item_features: the candidate-tower inputs of every catalogue row (n_items, ...) each; serving
            reads history items through them (click-history towers) and keeps them for items it adds.
        user_ids: (n_users,) str.
        user_features: the query-tower table features of every user (n_users, ...), and each history
            feature as item id-vocabulary indices (what a profile tower reads, for clients without twotower).
        log: the histories, seen items and events.
    """

    item_ids: np.ndarray
    items: pd.DataFrame
    item_features: Features
    user_ids: np.ndarray
    user_features: Features
    log: ServingLog


def serving_data(prepared: Prepared) -> ServingData:
    """``prepared``'s catalogue and users with its source's whole interaction log (``Prepared.serving_log``)."""
    log = prepared.serving_log()
    user_features = dict(prepared.users.cpu_columns())
    for name, rows in log.histories.items():
        user_features[name] = history_inputs(name, rows, False, prepared.item_vocab_index.cpu(), None)[name]
    return ServingData(
        item_ids=np.asarray(prepared.item_rows, dtype=str), items=prepared.tables.items, item_features=prepared.items.cpu_columns(),
        user_ids=np.asarray(prepared.user_rows, dtype=str), user_features=user_features, log=log,
    )
