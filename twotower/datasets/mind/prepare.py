"""``Prepared`` from MIND: the in-memory preparation, with behaviors.tsv's click histories and the impressions.

  * the history feature is the user's click history from behaviors.tsv (the train directory's for
    training, the dev directory's for validation and test), most recent first;
  * the impressions: each training click's impression (its skipped items are impression negatives),
    and every dev impression for the impression metrics.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from twotower.data.impressions import Impressions
from twotower.data.prepared import Prepared, prepare_tables
from twotower.data.schema import Schema
from twotower.data.splits import PredefinedSplit
from twotower.data.store import CSR
from twotower.data.tables import ITEM, SPLIT, USER
from twotower.datasets.mind.tables import IMPRESSION, IN_TRAIN, MindTables


def prepare_mind(tables: MindTables, schema: Schema, split: Callable, seed: int, candidates: str) -> Prepared:
    if not isinstance(split, PredefinedSplit):
        raise ValueError(f"MIND is split by its directories (train clicks train, dev impressions val and test): use the predefined split, "
                         f"not {type(split).__name__}")
    prepared = prepare_tables(tables, schema, split, seed, candidates)
    user_rows, item_rows = prepared.user_rows, prepared.item_rows
    histories = prepared.histories
    serving_log = prepared.serving_log
    if prepared.history_name:
        max_len = prepared.preprocessor.query[prepared.history_name].max_len
        dev = _click_history(tables.histories["dev"], max_len, user_rows, item_rows)
        histories = {"train": _click_history(tables.histories["train"], max_len, user_rows, item_rows), "val": dev, "test": dev}
        # Serving reads each user's latest behaviors.tsv history: the dev directory's where it has one, else the train directory's.
        latest = torch.where(dev.any(1, keepdim=True), dev, histories["train"])
        logged = prepared.serving_log
        serving_log = lambda: replace(logged(), histories={prepared.history_name: latest})  # noqa: E731
    return replace(prepared, histories=histories, impressions=_impressions(tables, user_rows, item_rows), serving_log=serving_log)


def _click_history(histories: pd.Series, max_len: int, user_rows: pd.Index, item_rows: pd.Index) -> torch.Tensor:
    """(n_users, max_len) item rows + 1 of each user's latest ``max_len`` clicks, most recent first; 0 = empty."""
    users = user_rows.get_indexer(histories.index)
    lengths = histories.map(len).to_numpy()
    flat = np.concatenate([np.asarray(h, dtype=object) for h in histories.to_numpy()] + [np.empty(0, dtype=object)])
    rows = item_rows.get_indexer(flat) + 1
    owner = np.repeat(users, lengths)
    from_end = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(flat)) - 1  # 0 = the latest click
    keep = from_end < max_len
    table = np.zeros((len(user_rows), max_len), dtype=np.int64)
    table[owner[keep], from_end[keep]] = rows[keep]
    return torch.from_numpy(table)


def _impressions(tables: MindTables, user_rows: pd.Index, item_rows: pd.Index) -> Impressions:
    clicks = tables.interactions
    shown, meta = tables.impressions, tables.impression_meta
    shown_split = meta[SPLIT].to_numpy()[shown[IMPRESSION].to_numpy()]
    item = torch.from_numpy(item_rows.get_indexer(shown[ITEM]))
    impression = torch.from_numpy(shown[IMPRESSION].to_numpy(copy=True))
    label = torch.from_numpy(shown["label"].to_numpy().astype(np.int64))
    skipped = torch.from_numpy((shown_split == "train") & (shown["label"].to_numpy() == 0))
    user_of_impression = torch.from_numpy(user_rows.get_indexer(meta[USER]))
    entries, users, by_user = {}, {}, {}
    for split in ("val", "test"):
        keep = torch.from_numpy(shown_split == split)
        entries[split] = torch.stack([item[keep], impression[keep], label[keep]])  # (3, n)
        users[split] = user_of_impression[impression[keep]]  # (n,)
        by_user[split] = CSR.from_pairs(users[split], torch.arange(int(keep.sum())), len(user_rows))
    return Impressions(
        of_train_pair=torch.from_numpy(clicks.loc[clicks[SPLIT] == "train", IMPRESSION].to_numpy(copy=True)),  # aligned with train_pairs
        skipped=CSR.from_pairs(impression[skipped], item[skipped], len(meta)),  # impression -> items shown, not clicked
        entries=entries, users=users, by_user=by_user,
        item_seen_in_train=torch.from_numpy(tables.items[IN_TRAIN].to_numpy(dtype=bool, copy=True)),
    )
