"""The query tower's inputs for a batch of users at serving time: their table features, their histories and the request's time.

Export (the TorchScript example) and the ``Retriever`` (stored users, raw user rows, visitors) build
them here, the data modules in ``query_features``, all through ``history_inputs``: a history is
catalogue rows + 1 everywhere, and the history feature says how its tower reads it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from twotower.data.store import Features
from twotower.features.history import history_inputs


def query_inputs(query: Mapping, table: Features, histories: Mapping[str, torch.Tensor], item_vocab_index: torch.Tensor,
                 gather_items: Callable[[torch.Tensor], Features], now: float) -> Features:
    """``table`` (B, ...) feature tensors and ``histories`` {history feature: (B, L) catalogue rows + 1} -> every input the query tower reads.

    Args:
        query: the query side's fitted features (``Preprocessor.query``), which say how each history is read.
        item_vocab_index: (n_items,) the item id-vocabulary index of each catalogue row.
        gather_items: catalogue rows -> the candidate-tower inputs of those items.
        now: the request's time (Unix seconds), which per-request features (``request_time``) read for every row.
    """
    inputs = dict(table)
    n = len(next(iter([*table.values(), *histories.values()])))
    for name, fitted in query.items():
        if fitted.kind.per_request:
            inputs[name] = torch.full((n,), float(now), dtype=torch.float64)
    for name, rows in histories.items():
        inputs.update(history_inputs(name, rows, query[name].spec.through_item_tower, item_vocab_index, gather_items))
    return inputs
