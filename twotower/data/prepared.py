"""The contract between data, module and export: what a data module's set-up computes, in one dataclass.

Every source prepares one ``Prepared`` (in-memory tables with ``prepare_tables``; a source with more to
say, such as impressions or parquet shards, with its own ``prepare``), and everything downstream reads
it: batches and their steps (``twotower.data.steps``), evaluation, beyond-accuracy metrics, export.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from twotower.data.first_seen import FirstSeen, first_seen
from twotower.data.impressions import Impressions
from twotower.data.schema import Schema
from twotower.data.serving_data import ServingLog
from twotower.data.splits import PredefinedSplit
from twotower.data.store import CSR, FeatureStore
from twotower.data.tables import EXCLUDED, ITEM, SPLIT, SPLITS, TIME, USER, Tables
from twotower.features import Preprocessor

log = logging.getLogger(__name__)

class TrainStream(Protocol):
    """Training pairs too many to hold: each process streams its own share (``twotower.data.streaming``)."""

    description: str  # where the pairs come from, for errors

    def steps(self, world_size: int, batch_size: int) -> int:
        """Full batches every process can fill in an epoch (all take the same number, so collectives stay in step)."""

    def batches(self, rank: int, world_size: int, epoch: int, batch_size: int) -> IterableDataset:
        """The process's (B, 2) int64 (user row, item row) batches, ``steps`` of them per pass, from ``epoch`` on."""


@dataclass
class Prepared:
    """Everything set-up computes from a source: fitted features, stores, the split's pairs and the tables evaluation reads.

    Rows are positions in the users / items tables (``user_rows`` / ``item_rows``); histories hold
    catalogue rows + 1 (0 = empty slot) and are read through ``twotower.features.history.history_inputs``.

    Attributes:
        preprocessor: the fitted features of both towers and the train-split id vocabularies.
        users, items: every user's / item's feature tensors, by row.
        user_rows, item_rows: the id of each row.
        item_vocab_index: (n_items,) each catalogue row's index in the train id vocabulary (0 = not trained on).
        item_counts: (n_items,) training interactions per item; ``item_log_q`` its log share (the logQ
            correction), items never trained on at the smallest train item's value.
        trained_items: item rows with training interactions (sampled negatives are drawn from them).
        known, heldout, eval_users, candidates: per evaluation split (``val``, ``test``): each user's items
            known before it (excluded from the ranking), the held-out items (targets), the users ranked, and
            the items ranked (None: the whole catalogue).
        histories: per split (``train``, ``val``, ``test``): (n_users, L) each user's history as seen at that time.
        history_name: the query side's history feature, if any.
        split_counts: interactions per split.
        train_pairs: (n_train, 2) (user row, item row) training pairs in memory, or None when ``stream`` gives them.
        train_times: (n_train,) float64 Unix seconds of each training pair, where the interactions have times and are in
            memory: what a per-request feature (``request_time``) reads in training.
        stream: the streamed training pairs of a source too big to hold.
        impressions: what users were shown and skipped, where the source records it (impression negatives, impression metrics).
        tables: the loaded tables (users and items as given; interactions, or the shard reader).
        serving_log: reads every logged interaction (all splits) for export (``twotower.data.serving_data``).
        first_seen: per evaluation split, when each item was first seen in the interactions known before it
            and when those end (the freshness metrics' item ages, and the time a per-request feature reads
            at evaluation); None when the interactions have no times.
        known_events: per evaluation split, the (item rows, times) of the interactions known before it (the
            popularity prior's counts); None when the interactions have no times.
    """

    preprocessor: Preprocessor
    users: FeatureStore
    items: FeatureStore
    user_rows: pd.Index
    item_rows: pd.Index
    item_vocab_index: torch.Tensor
    item_counts: torch.Tensor
    item_log_q: torch.Tensor
    trained_items: torch.Tensor
    known: dict[str, CSR]
    heldout: dict[str, CSR]
    eval_users: dict[str, torch.Tensor]
    candidates: dict[str, torch.Tensor | None]
    histories: dict[str, torch.Tensor]
    history_name: str | None
    split_counts: dict[str, int]
    tables: Tables
    train_pairs: torch.Tensor | None = None
    train_times: torch.Tensor | None = None
    stream: TrainStream | None = None
    impressions: Impressions | None = None
    serving_log: Callable[[], ServingLog] | None = None
    first_seen: dict[str, FirstSeen] | None = None
    known_events: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def to(self, device: torch.device) -> Prepared:
        """Every tensor, store and CSR on ``device``: once per process, not per batch."""
        movable = (torch.Tensor, FeatureStore, CSR, Impressions)
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, movable):
                value = value.to(device)
            elif isinstance(value, dict):  # per split: tensors, CSRs, None; or plain numbers (split_counts), kept as they are
                value = {k: v.to(device) if isinstance(v, movable) else v for k, v in value.items()}
            moved[f.name] = value
        return replace(self, **moved)


def log_q_of(item_counts: torch.Tensor) -> torch.Tensor:
    """(n_items,) log share of training interactions; items never trained on get the smallest probability a train item has."""
    probs = item_counts.double() / item_counts.sum()
    probs[probs == 0] = probs[probs > 0].min()
    return probs.log().float()


def label_split(interactions: pd.DataFrame, split: Callable[[pd.DataFrame], pd.Series], name: str) -> pd.DataFrame:
    """The interactions with their split label, refused when the split leaves train or validation empty."""
    labels = split(interactions)
    if set(labels.unique()) - set(SPLITS) - {EXCLUDED}:
        raise ValueError(f"split produced labels {sorted(labels.unique())}; expected train/val/test (or {EXCLUDED})")
    interactions = interactions.assign(**{SPLIT: labels.to_numpy()})
    excluded = interactions[SPLIT] == EXCLUDED
    if excluded.any():
        # Rows a protocol leaves out (temporal_warm's test rows of users without training history) are
        # neither trained on nor evaluated: dropped before anything is counted or fitted.
        log.info("interactions: %d excluded by the split", int(excluded.sum()))
        interactions = interactions[~excluded.to_numpy()]
    counts = interactions[SPLIT].value_counts().reindex(list(SPLITS), fill_value=0)
    for part in ("train", "val"):
        if counts[part] == 0:
            raise ValueError(f"the split leaves '{part}' empty ({counts.to_dict()}): check the split fractions or files of {name}")
    log.info("interactions: %s", counts.to_dict())
    return interactions


def history_table(n_users: int, users: torch.Tensor, items: torch.Tensor, times: np.ndarray | None, max_len: int, seed: int) -> torch.Tensor:
    """(n_users, max_len) catalogue rows + 1 of each user's latest ``max_len`` items, most recent first; 0 = empty slot.

    Without timestamps, each user's history is a seeded random order of their items.
    """
    recency = -times if times is not None else np.random.default_rng(seed).random(len(users))
    order = np.lexsort((recency, users.numpy()))
    users_sorted, items_sorted = users.numpy()[order], items.numpy()[order] + 1
    starts = np.searchsorted(users_sorted, users_sorted, side="left")
    position = np.arange(len(users_sorted)) - starts
    keep = position < max_len
    table = np.zeros((n_users, max_len), dtype=np.int64)
    table[users_sorted[keep], position[keep]] = items_sorted[keep]
    return torch.from_numpy(table)


def prepare_tables(tables: Tables, schema: Schema, split: Callable[[pd.DataFrame], pd.Series], seed: int, candidates: str = "all") -> Prepared:
    """The in-memory preparation: split, fit on train, stores, pairs, known and held-out items, histories.

    Args:
        candidates: ``all`` ranks the whole catalogue at evaluation; ``heldout`` only each split's held-out items.
    """
    if SPLIT in tables.interactions and not isinstance(split, PredefinedSplit):
        # The source merged repeats of a pair per given split; splitting again would put the copies apart.
        raise ValueError(f"{tables.names['interactions']}: column {tables.column_label(SPLIT)} gives a train/val/test split, and the split is "
                         f"{type(split).__name__}, which would ignore it and split again: use data/split=predefined, "
                         "or leave out the column (and data.source.split)")
    interactions = label_split(tables.interactions, split, tables.names["interactions"])
    train = interactions[interactions[SPLIT] == "train"]
    preprocessor = Preprocessor.fit(schema, train, tables.users, tables.items, tables.names)
    users = FeatureStore(preprocessor.transform("query", tables.users, tables.names["users"]), len(tables.users))
    items = FeatureStore(preprocessor.transform("candidate", tables.items, tables.names["items"]), len(tables.items))
    user_rows, item_rows = pd.Index(tables.users[USER]), pd.Index(tables.items[ITEM])
    n_users, n_items = len(user_rows), len(item_rows)

    u = torch.from_numpy(user_rows.get_indexer(interactions[USER]))
    i = torch.from_numpy(item_rows.get_indexer(interactions[ITEM]))
    part = {p: torch.from_numpy((interactions[SPLIT] == p).to_numpy().copy()) for p in SPLITS}
    known_before = {"val": part["train"], "test": part["train"] | part["val"]}
    train_pairs = torch.stack([u[part["train"]], i[part["train"]]], 1)  # (n_train, 2)
    item_counts = torch.bincount(train_pairs[:, 1], minlength=n_items).long()

    history_name = schema.history_name()
    max_len = preprocessor.query[history_name].max_len if history_name else 0
    times = interactions[TIME].to_numpy(dtype=np.float64) if TIME in interactions else None
    histories = {}
    if history_name:
        for s, known in (("val", known_before["val"]), ("test", known_before["test"])):
            histories[s] = history_table(n_users, u[known], i[known], None if times is None else times[known.numpy()], max_len, seed)
        histories["train"] = histories["val"]  # training rows see the train split, less their own target

    def serving_log() -> ServingLog:
        served = {history_name: history_table(n_users, u, i, times, max_len, seed)} if history_name else {}
        return ServingLog(served, CSR.from_pairs(u, i, n_users), i.numpy(), times if times is not None else np.zeros(len(i)), timed=times is not None)
    return Prepared(
        preprocessor=preprocessor, users=users, items=items, user_rows=user_rows, item_rows=item_rows,
        item_vocab_index=torch.from_numpy(preprocessor.item_ids.lookup(tables.items[ITEM].tolist())),
        item_counts=item_counts, item_log_q=log_q_of(item_counts), trained_items=torch.unique(train_pairs[:, 1]),
        known={s: CSR.from_pairs(u[k], i[k], n_users) for s, k in known_before.items()},
        heldout={s: CSR.from_pairs(u[part[s]], i[part[s]], n_users, distinct=True) for s in ("val", "test")},
        eval_users={s: torch.unique(u[part[s]]) for s in ("val", "test")},
        candidates={s: None if candidates == "all" else torch.zeros(n_items, dtype=torch.bool).index_fill_(0, torch.unique(i[part[s]]), True)
                    for s in ("val", "test")},
        histories=histories, history_name=history_name, split_counts=interactions[SPLIT].value_counts().reindex(list(SPLITS), fill_value=0).to_dict(),
        tables=tables, train_pairs=train_pairs, serving_log=serving_log,
        train_times=None if times is None else torch.from_numpy(times[part["train"].numpy()]),
        first_seen=None if times is None else {s: first_seen(i[k].numpy(), times[k.numpy()], n_items) for s, k in known_before.items()},
        known_events=None if times is None else {s: (i[k].numpy(), times[k.numpy()]) for s, k in known_before.items()},
    )
