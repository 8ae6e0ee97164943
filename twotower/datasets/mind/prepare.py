"""``Prepared`` from MIND: the in-memory preparation, with behaviors.tsv's click histories and the impressions.

  * each impression's history is the click history on its own behaviors.tsv line (MIND's protocol, as
    NRMS, NAML and LSTUR read it), most recent first; optionally with the user's earlier training
    clicks ahead of it. A training click reads its impression's history, and the impression metrics
    score each dev impression with its own;
  * the per-user histories (the full-catalogue ranking metrics, serving) are each user's latest line:
    the train directory's for training, the dev directory's for validation and test;
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
from twotower.data.tables import ITEM, SPLIT, TIME, USER
from twotower.datasets.mind.tables import IMPRESSION, IN_TRAIN, MindTables


def prepare_mind(tables: MindTables, schema: Schema, split: Callable, seed: int, candidates: str, earlier_clicks_in_history: bool = False) -> Prepared:
    if not isinstance(split, PredefinedSplit):
        raise ValueError(f"MIND is split by its directories (train clicks train, dev impressions val and test): use the predefined split, "
                         f"not {type(split).__name__}")
    prepared = prepare_tables(tables, schema, split, seed, candidates)
    user_rows, item_rows = prepared.user_rows, prepared.item_rows
    impressions = _impressions(tables, user_rows, item_rows)
    histories, serving_log = prepared.histories, prepared.serving_log
    if prepared.history_name:
        max_len = prepared.preprocessor.query[prepared.history_name].max_len
        earlier = _earlier_train_clicks(tables, user_rows, item_rows, max_len) if earlier_clicks_in_history else None
        lines = line_histories(tables.histories, item_rows, max_len, earlier)  # (n_impressions, L)
        impressions = replace(impressions, histories=lines)
        in_train = torch.from_numpy(tables.impression_meta[SPLIT].to_numpy() == "train")
        train = _latest_line(lines, impressions.user_of, in_train, tables.impression_meta[TIME].to_numpy(), len(user_rows))
        dev = _latest_line(lines, impressions.user_of, ~in_train, tables.impression_meta[TIME].to_numpy(), len(user_rows))
        histories = {"train": train, "val": dev, "test": dev}
        # Serving reads each user's latest history: the dev directory's where the user has a line there, else the train directory's.
        has_dev_line = torch.zeros(len(user_rows), dtype=torch.bool)
        has_dev_line[impressions.user_of[~in_train]] = True
        latest = torch.where(has_dev_line.unsqueeze(1), dev, train)
        logged = prepared.serving_log
        serving_log = lambda: replace(logged(), histories={prepared.history_name: latest})  # noqa: E731
    return replace(prepared, histories=histories, impressions=impressions, serving_log=serving_log)


def line_histories(lines: pd.Series, item_rows: pd.Index, max_len: int, earlier: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """(n_lines, max_len) catalogue rows + 1 of each line's latest ``max_len`` history items, most recent first; 0 = empty.

    Args:
        lines: per line (index 0..n-1 in order), its history's news ids, oldest first.
        earlier: (line, item row) pairs, oldest first within a line, of items clicked after the line's
            history was written and before the line: they come first (most recent first), then the history.
    """
    lengths = lines.map(len).to_numpy()
    flat = np.concatenate([np.asarray(h, dtype=object) for h in lines.to_numpy()] + [np.empty(0, dtype=object)])
    owner, rows = np.repeat(np.arange(len(lines)), lengths), item_rows.get_indexer(flat)
    if earlier is not None:
        # Earlier clicks after the line's own history: stable by line, so each line reads oldest to latest.
        order = np.argsort(np.concatenate([owner, earlier[0]]), kind="stable")
        owner, rows = np.concatenate([owner, earlier[0]])[order], np.concatenate([rows, earlier[1]])[order]
    sizes = np.bincount(owner, minlength=len(lines))
    from_end = np.repeat(np.cumsum(sizes), sizes) - np.arange(len(owner)) - 1  # 0 = the latest item of the line
    keep = from_end < max_len
    table = np.zeros((len(lines), max_len), dtype=np.int64)
    table[owner[keep], from_end[keep]] = rows[keep] + 1
    return torch.from_numpy(table)


def _earlier_train_clicks(tables: MindTables, user_rows: pd.Index, item_rows: pd.Index, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(line, item row) of each line's user's latest ``max_len`` training clicks strictly before the line's time, oldest first per line."""
    clicks = tables.interactions[tables.interactions[SPLIT] == "train"]
    meta = tables.impression_meta
    start = min(int(clicks[TIME].min()) if len(clicks) else 0, int(meta[TIME].min()))
    # One sortable int64 key per (user, time): times span far less than 2**32 seconds.
    key = lambda users, times: users.astype(np.int64) * 2**32 + (np.asarray(times, dtype=np.int64) - start)  # noqa: E731
    click_key = key(user_rows.get_indexer(clicks[USER]), clicks[TIME].to_numpy())
    order = np.argsort(click_key, kind="stable")
    click_key, click_item = click_key[order], item_rows.get_indexer(clicks[ITEM].to_numpy())[order]
    line_user = user_rows.get_indexer(meta[USER])
    end = np.searchsorted(click_key, key(line_user, meta[TIME].to_numpy()), side="left")  # past the user's clicks before the line
    first = np.searchsorted(click_key, key(line_user, np.full(len(meta), start)), side="left")  # the user's first click
    count = np.minimum(end - first, max_len)
    position = np.arange(count.sum()) + np.repeat(end - count - (np.cumsum(count) - count), count)
    return np.repeat(np.arange(len(meta)), count), click_item[position]


def _latest_line(lines: torch.Tensor, user_of: torch.Tensor, among: torch.Tensor, times: np.ndarray, n_users: int) -> torch.Tensor:
    """(n_users, L) the history of each user's latest line ``among`` the lines (ties: the later line); zeros for users without one."""
    order = np.lexsort((np.arange(len(times)), times))  # by time, then file order
    chosen = order[among.numpy()[order]]
    latest = np.full(n_users, -1, dtype=np.int64)
    latest[user_of.numpy()[chosen]] = chosen  # a later assignment wins: the latest line
    out = torch.zeros(n_users, lines.shape[1], dtype=lines.dtype)
    has = torch.from_numpy(latest >= 0)
    out[has] = lines[torch.from_numpy(latest[latest >= 0])]
    return out


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
        user_of=user_of_impression,
    )
