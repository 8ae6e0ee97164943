"""``Prepared`` from parquet shards: one streamed scan for what training needs globally; pairs streamed per process.

The scan runs in each process (so no process group is needed yet): split counts, id vocabularies and
item counts (logQ), each row group's train rows (the step plan), the history tables, and the rows of
a sample of users (evaluation). No process ever holds all interactions.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from twotower.data.prepared import Prepared, log_q_of
from twotower.data.schema import Schema
from twotower.data.serving_data import ServingLog
from twotower.data.splits import HashSplit, PredefinedSplit, mix64
from twotower.data.store import CSR, FeatureStore
from twotower.data.streaming.labels import TEST, TRAIN, VAL, ColumnCodes, HashCodes
from twotower.data.streaming.scan import scan, serving_scan
from twotower.data.streaming.shards import InteractionShards, ShardedTables
from twotower.data.streaming.stream import ShardStream
from twotower.data.tables import ITEM, SPLIT, SPLITS, USER
from twotower.data.vocab import Vocabulary
from twotower.features import Preprocessor
from twotower.features.history import history_length

log = logging.getLogger(__name__)


def prepare_shards(tables: ShardedTables, schema: Schema, split: Callable, seed: int, candidates: str, eval_users: int | None,
                   shuffle_buffer: int, pin_memory: bool = True) -> Prepared:
    """Args:
        split: ``HashSplit`` (a seeded hash of each row's user and item ids) or ``PredefinedSplit`` (the
            shards' split column): both label a row from the row alone.
        eval_users: validation and test rank the catalogue for the held-out items of at most this many
            users (those with the smallest seeded hash of their id, so every process picks the same ones);
            None evaluates every user, holding all their rows in memory.
        shuffle_buffer: training pairs each process shuffles among.
        pin_memory: page-lock the training batches when CUDA is available.
    """
    if not isinstance(split, (HashSplit, PredefinedSplit)):
        raise ValueError(f"sharded interactions are split by HashSplit or PredefinedSplit (a split column), not {type(split).__name__}: "
                         "other splits need every interaction in memory")
    if candidates != "all":
        raise ValueError(f"candidates='{candidates}' needs each split's held-out items of every user; sharded interactions rank the whole catalogue ('all')")
    shards: InteractionShards = tables.interactions
    if isinstance(split, PredefinedSplit) and not shards.has_split:
        raise ValueError(f"PredefinedSplit needs a split column: set data.source.split to its name in {shards.directory}")
    if shards.has_split and not isinstance(split, PredefinedSplit):
        raise ValueError(f"{shards.directory}: column '{shards.columns[SPLIT]}' gives a train/val/test split, and the split is {type(split).__name__}, "
                         "which would ignore it: use data/split=predefined, or leave out data.source.split")
    users, items = tables.users, tables.items
    user_rows, item_rows = pd.Index(users[USER]), pd.Index(items[ITEM])
    n_users, n_items = len(users), len(items)
    labels = ColumnCodes() if isinstance(split, PredefinedSplit) else HashCodes(split, users, items)
    history_name = schema.history_name()
    history_spec = next((s for s in schema.query if s.name == history_name), None)
    history_len = history_spec and history_length(history_spec)

    stats = scan(shards, labels, n_users, n_items, _sample(users[USER], eval_users, seed), history_len, seed)
    counts = dict(zip(SPLITS, stats.split_counts.tolist()))
    for part in ("train", "val"):
        if counts[part] == 0:
            raise ValueError(f"the split leaves '{part}' empty ({counts}): check the split fractions or the split column of {shards.directory}")
    log.info("interactions: %s in %d row groups of %d shards", counts, len(shards.row_groups), len(shards.files))

    user_ids = Vocabulary.from_counts(users[USER].to_numpy(dtype=object), stats.user_counts)
    item_ids = Vocabulary.from_counts(items[ITEM].to_numpy(dtype=object), stats.item_counts)
    preprocessor = Preprocessor.fit_with_ids(schema, user_ids, item_ids, users, items, tables.names)
    item_counts = torch.from_numpy(stats.item_counts)

    u, i = (torch.from_numpy(stats.sample[k]) for k in ("users", "items"))  # int32, widened a subset at a time (peak memory)
    part = torch.from_numpy(stats.sample["splits"])
    train, known_test = part == TRAIN, part != TEST

    def pairs(where: torch.Tensor, distinct: bool = False) -> CSR:
        return CSR.from_pairs(u[where].long(), i[where].long(), n_users, distinct)

    histories = {}
    if history_name:
        # Item rows, -1 = empty -> catalogue rows + 1, 0 = empty (as every source keeps histories).
        histories = {s: torch.from_numpy(rows.astype(np.int64) + 1) for s, rows in stats.history.items()}
        histories["train"] = histories["val"]

    def serving_log() -> ServingLog:
        every = serving_scan(shards, n_users, history_len, seed)
        served = {history_name: torch.from_numpy(every.history.astype(np.int64) + 1)} if history_name else {}
        return ServingLog(served, CSR.from_pairs(torch.from_numpy(every.users), torch.from_numpy(every.items), n_users), every.items, every.times,
                          timed=shards.has_times)

    return Prepared(
        preprocessor=preprocessor,
        users=FeatureStore(preprocessor.transform("query", users, tables.names["users"]), n_users),
        items=FeatureStore(preprocessor.transform("candidate", items, tables.names["items"]), n_items),
        user_rows=user_rows, item_rows=item_rows, item_vocab_index=torch.from_numpy(item_ids.lookup(items[ITEM].tolist())),
        item_counts=item_counts, item_log_q=log_q_of(item_counts), trained_items=torch.from_numpy(np.flatnonzero(stats.item_counts)),
        known={"val": pairs(train), "test": pairs(known_test)},
        heldout={s: pairs(part == code, distinct=True) for s, code in (("val", VAL), ("test", TEST))},
        eval_users={s: torch.unique(u[part == code]).long() for s, code in (("val", VAL), ("test", TEST))},
        candidates={"val": None, "test": None}, histories=histories, history_name=history_name, split_counts=counts, tables=tables,
        stream=ShardStream(shards, stats.train_masks, shuffle_buffer, seed, pin_memory), serving_log=serving_log,
    )


def _sample(user_keys: pd.Series, eval_users: int | None, seed: int) -> np.ndarray:
    """(n_users,) bool: the evaluation users, chosen by a seeded hash of their id."""
    if eval_users is None or eval_users >= len(user_keys):
        return np.ones(len(user_keys), dtype=bool)
    hashes = mix64(pd.util.hash_array(user_keys.to_numpy(dtype=object), hash_key=f"{seed % 10**16:016d}") ^ np.uint64(0x5EED))
    chosen = np.zeros(len(user_keys), dtype=bool)
    chosen[np.argsort(hashes, kind="stable")[:eval_users]] = True
    return chosen
